// Starts the usage-sync binary on a free port with a data dir of its own,
// for the tests and the benchmark: `await serve(bin, env)` resolves once
// /readyz answers 200, with `base` and a `stop()` that waits for the exit
// (the final flush and checkpoint write into the data dir meanwhile).
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer } from "node:net";

const freePort = () => new Promise(res => {
  const s = createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => res(p)); });
});

export async function serve(bin, env = {}) {
  if (!existsSync(bin)) {
    throw new Error(`no usage-sync binary at ${bin}: build it (cargo build) or set USAGE_SYNC_BIN to its path`);
  }
  const dir = mkdtempSync(join(tmpdir(), "usage-sync-ts-"));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const server = spawn(bin, ["serve"], {
    env: {
      PATH: process.env.PATH,
      USAGE_SYNC_LISTEN: `127.0.0.1:${port}`,
      USAGE_SYNC_DATA_DIR: dir,
      USAGE_SYNC_API_TOKEN: "api-t",
      USAGE_SYNC_ADMIN_TOKEN: "admin-t",
      USAGE_SYNC_VERBOSE_LOGGING: "false",
      USAGE_SYNC_LOG_LEVEL: "warn",
      ...env,
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  let exited = null;
  server.once("exit", code => { exited = code; });
  const stop = async () => {
    if (exited === null) {
      const done = new Promise(r => server.once("exit", r));
      server.kill("SIGTERM");
      await done;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  for (let i = 0; i < 400; i++) {
    if (exited !== null) throw new Error(`usage-sync (${bin}) exited with code ${exited} before it was ready; see its output above`);
    try { if ((await fetch(`${base}/readyz`)).status === 200) return { base, stop }; } catch {}
    await new Promise(r => setTimeout(r, 50));
  }
  await stop();
  throw new Error("usage-sync did not become ready within 20 s");
}
