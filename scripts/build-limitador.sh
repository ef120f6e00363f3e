#!/usr/bin/env bash
# Builds limitador-server (github.com/Kuadrant/limitador) with memory
# storage only, for the same-run comparison in scripts/bench.sh:
#
#   git clone https://github.com/Kuadrant/limitador /tmp/limitador
#   scripts/build-limitador.sh /tmp/limitador
#   LIMITADOR_BIN=/tmp/limitador/target/release/limitador-server scripts/bench.sh
#
# Its default features compile RocksDB (about 27 minutes on 2 cores, and
# libclang); the comparison uses memory storage, so this turns the disk
# storage off: limitador-server refers to it unconditionally, so the patch
# below swaps its one type for a local copy and makes `disk` exit with a
# message (and builds the library's key module, which its Redis storage
# needs, without the disk storage). Redis storage stays (pure Rust). Limitador's own release
# profile (LTO, one codegen unit) is kept. Needs protoc (Debian:
# protobuf-compiler) and, for OpenSSL built from source, perl and make.
set -euo pipefail
SRC=${1:?usage: scripts/build-limitador.sh LIMITADOR_SOURCE_DIR}
cd "$SRC"
command -v protoc >/dev/null || { apt-get update -qq && apt-get install -y -qq protobuf-compiler; }
command -v make >/dev/null || { apt-get update -qq && apt-get install -y -qq make perl; }
# Each patch is skipped when already applied, so the script can be run
# again on the same tree.
python3 - <<'PY'
import re, sys

def patch(path, old, new, done):
    s = open(path).read()
    if done in s:
        return
    if old not in s:
        sys.exit(f"{path}: expected text not found (has limitador changed?): {old[:60]!r}")
    open(path, "w").write(s.replace(old, new))

patch("limitador-server/Cargo.toml",
      'limitador = { path = "../limitador" }',
      'limitador = { path = "../limitador", default-features = false, features = ["redis_storage"] }',
      'default-features = false, features = ["redis_storage"]')
# The library's Redis keys use a module (and a method) it only builds
# with disk storage.
patch("limitador/src/storage/keys.rs",
      '#[cfg(feature = "disk_storage")]\npub mod bin {',
      '#[cfg(any(feature = "disk_storage", feature = "redis_storage"))]\npub mod bin {',
      'feature = "redis_storage"))]\npub mod bin {')
patch("limitador/src/counter.rs",
      '#[cfg(feature = "disk_storage")]\n    pub(crate) fn variables_for_key',
      '#[cfg(any(feature = "disk_storage", feature = "redis_storage"))]\n    pub(crate) fn variables_for_key',
      'feature = "redis_storage"))]\n    pub(crate) fn variables_for_key')
patch("limitador-server/src/main.rs", "use limitador::storage::disk::DiskStorage;\n", "", "fn disk_limiter(cfg: DiskStorageConfiguration) -> Self {\n        eprintln!")
s = open("limitador-server/src/main.rs").read()
s = s.replace("storage::disk::OptimizeFor", "crate::config::OptimizeFor")
start = s.index("    fn disk_limiter(cfg: DiskStorageConfiguration) -> Self {")
end = s.index("    fn in_memory_limiter(")
s = s[:start] + """    fn disk_limiter(cfg: DiskStorageConfiguration) -> Self {
        eprintln!("built without disk storage; cannot open {}", cfg.path);
        process::exit(1)
    }

""" + s[end:]
open("limitador-server/src/main.rs", "w").write(s)
patch("limitador-server/src/config.rs", "storage::disk::OptimizeFor", "OptimizeFor", "pub enum OptimizeFor")
s = open("limitador-server/src/config.rs").read()
if "pub enum OptimizeFor" not in s:
    s += """
// Memory storage only (usage-sync bench): a copy of the disk storage's
// option, which is not built.
#[derive(PartialEq, Eq, Debug)]
pub enum OptimizeFor {
    Space,
    Throughput,
}
"""
    open("limitador-server/src/config.rs", "w").write(s)
PY
cargo build --release --locked -p limitador-server
ls -l target/release/limitador-server
