// End-to-end from Node: 64 concurrent callers, each awaiting consume() in
// a loop, against the real binary; one HTTP request per consume, then the
// same with `batch` on, in the same run. Prints consumes per second and
// the latency each caller saw, and the ratio.
//
//   cargo build --release --bin usage-sync
//   USAGE_SYNC_BIN=../../target/release/usage-sync node scripts/bench.mjs
//   (CALLERS=64 BENCH_SECONDS=10 MAX_WAIT_MS=1)
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { UsageSyncClient } from "../src/index.js";
import { serve } from "./serve.mjs";

const here = fileURLToPath(new URL(".", import.meta.url));
const BIN = process.env.USAGE_SYNC_BIN || join(here, "../../../target/release/usage-sync");
const CALLERS = Number(process.env.CALLERS || 64);
const SECONDS = Number(process.env.BENCH_SECONDS || 10);
const MAX_WAIT_MS = Number(process.env.MAX_WAIT_MS || 1);

const { base, stop } = await serve(BIN);
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
await stop();
