// End-to-end from Node: 64 concurrent callers, each awaiting consume() in
// a loop, against the real binary; one HTTP request per consume, then the
// same with `batch` on, in the same run. Prints consumes per second and
// the latency each caller saw, and the ratio.
//
//   cargo build --release --bin usage-sync
//   USAGE_SYNC_BIN=../../target/release/usage-sync node scripts/bench.mjs
//   (CALLERS=64 BENCH_SECONDS=10 MAX_WAIT_MS=1)
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { UsageSyncClient } from "../src/index.js";

const here = fileURLToPath(new URL(".", import.meta.url));
const BIN = process.env.USAGE_SYNC_BIN || join(here, "../../../target/release/usage-sync");
const CALLERS = Number(process.env.CALLERS || 64);
const SECONDS = Number(process.env.BENCH_SECONDS || 10);
const MAX_WAIT_MS = Number(process.env.MAX_WAIT_MS || 1);

const port = await new Promise(res => {
  const s = createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => res(p)); });
});
const dir = mkdtempSync(join(tmpdir(), "usage-sync-bench-"));
const base = `http://127.0.0.1:${port}`;
const server = spawn(BIN, ["serve"], {
  env: {
    PATH: process.env.PATH,
    USAGE_SYNC_LISTEN: `127.0.0.1:${port}`,
    USAGE_SYNC_DATA_DIR: dir,
    USAGE_SYNC_API_TOKEN: "api-t",
    USAGE_SYNC_ADMIN_TOKEN: "admin-t",
    USAGE_SYNC_VERBOSE_LOGGING: "false",
    USAGE_SYNC_LOG_LEVEL: "warn",
  },
  stdio: ["ignore", "ignore", "inherit"],
});
for (let i = 0; ; i++) {
  try { if ((await fetch(`${base}/readyz`)).status === 200) break; } catch {}
  if (i > 400) throw new Error("usage-sync did not become ready");
  await new Promise(r => setTimeout(r, 50));
}
const admin = new UsageSyncClient({ baseUrl: base, adminToken: "admin-t" });
await admin.putPlan("bench", { limits: { premium: 1_000_000_000, fast: 1_000_000_000 } });
for (let u = 0; u < 10_000; u += 1) {
  if (u % 1000 === 0) await Promise.all(Array.from({ length: 1000 }, (_, k) => admin.putUser(`bench-${u + k}`, { plan: "bench" })));
}

async function run(label, options) {
  const c = new UsageSyncClient({ baseUrl: base, apiToken: "api-t", ...options });
  const lat = [];
  let done = 0;
  const until = performance.now() + SECONDS * 1000;
  await Promise.all(Array.from({ length: CALLERS }, async () => {
    while (performance.now() < until) {
      const t = performance.now();
      const r = await c.consume({ userId: `bench-${Math.floor(Math.random() * 10_000)}`, kind: "fast" });
      if (!r.allowed) throw new Error("denied");
      lat.push(performance.now() - t);
      done++;
    }
  }));
  lat.sort((a, b) => a - b);
  const p = q => lat[Math.min(lat.length - 1, Math.floor(q * lat.length))].toFixed(2);
  return { label, rate: done / SECONDS, p50: p(0.5), p99: p(0.99) };
}

const rows = [];
for (let round = 0; round < 2; round++) {
  rows.push(await run("one request per consume", {}));
  rows.push(await run(`batch: { maxWaitMs: ${MAX_WAIT_MS} }`, { batch: { maxWaitMs: MAX_WAIT_MS } }));
}
console.log(`| ${CALLERS} callers, ${SECONDS} s each | consumes/s | p50 ms | p99 ms |`);
console.log("|---|---|---|---|");
for (const r of rows) console.log(`| ${r.label} | ${Math.round(r.rate)} | ${r.p50} | ${r.p99} |`);
const [a, b, c2, d] = rows;
console.log(`\nbatched / one per consume: ${(b.rate / a.rate).toFixed(2)}x, ${(d.rate / c2.rate).toFixed(2)}x (two rounds)`);
const exited = new Promise(r => server.once("exit", r));
server.kill("SIGTERM");
await exited;
rmSync(dir, { recursive: true, force: true });
