// The client against the real usage-sync binary (USAGE_SYNC_BIN, default
// the workspace's debug build), over real HTTP, with Node's test runner:
//   USAGE_SYNC_BIN=../../target/debug/usage-sync node --test test/
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { UsageSyncClient, UsageSyncError } from "../src/index.js";
import { serve } from "../scripts/serve.mjs";

const here = fileURLToPath(new URL(".", import.meta.url));
const BIN = process.env.USAGE_SYNC_BIN || join(here, "../../../target/debug/usage-sync");
let server, base;

before(async () => {
  server = await serve(BIN, { USAGE_SYNC_THRESHOLD: "1000000" });
  base = server.base;
});

after(async () => {
  await server.stop();
});

// A fetch whose first answer is lost on the way back (the request did
// land), as a dropped connection loses it; `calls()` counts the attempts.
const losingFirstAnswer = () => {
  let calls = 0;
  const fetchFn = async (url, init) => {
    const res = await fetch(url, init);
    if (++calls === 1) { await res.text(); throw new TypeError("socket hang up"); }
    return res;
  };
  return { fetch: fetchFn, calls: () => calls };
};

const client = (extra = {}) => new UsageSyncClient({ baseUrl: base, apiToken: "api-t", adminToken: "admin-t", backoffMs: 10, ...extra });

test("the generated types match the OpenAPI document", () => {
  execFileSync(process.execPath, [join(here, "../scripts/gen-types.mjs"), "--check"]);
});

test("consume generates a request id, counts once, and answers 429 as allowed: false", async () => {
  const c = client();
  const a = await c.consume({ userId: "ts-1", kind: "premium", amount: 9 });
  assert.equal(a.allowed, true);
  assert.equal(a.used, 9);
  assert.match(a.request_id, /^[0-9a-f-]{36}$/);
  const again = await c.consume({ userId: "ts-1", kind: "premium", amount: 9, requestId: a.request_id });
  assert.equal(again.deduplicated, true);
  assert.equal(again.used, 9);
  const over = await c.consume({ userId: "ts-1", kind: "premium", amount: 2 });
  assert.equal(over.allowed, false);
  assert.equal(over.error.code, "limit_exceeded");
  assert.equal(over.remaining, 1);
});

test("a retry after a lost response does not count twice", async () => {
  const lossy = losingFirstAnswer();
  const c = client({ fetch: lossy.fetch });
  const r = await c.consume({ userId: "ts-2", kind: "fast", amount: 3 });
  assert.equal(lossy.calls(), 2);
  assert.equal(r.allowed, true);
  assert.equal(r.deduplicated, true, "the retry is answered from the first attempt's record");
  assert.equal((await c.usage("ts-2")).kinds.fast.used, 3);
});

test("503s are retried under the same request id", async () => {
  let calls = 0; const ids = new Set();
  const flaky = async (url, init) => {
    ids.add(JSON.parse(init.body).request_id);
    if (++calls <= 2) return new Response(JSON.stringify({ error: { code: "unavailable", message: "starting" } }), { status: 503 });
    return fetch(url, init);
  };
  const r = await client({ fetch: flaky }).consume({ userId: "ts-3", kind: "fast" });
  assert.equal(calls, 3);
  assert.equal(ids.size, 1);
  assert.equal(r.used, 1);
});

test("a batch is decided in order and can be retried without counting twice", async () => {
  const lossy = losingFirstAnswer();
  const r = await client({ fetch: lossy.fetch }).consumeBatch([
    { userId: "ts-b", kind: "premium", amount: 6 },
    { userId: "ts-b", kind: "premium", amount: 6 },
    { userId: "ts-b", kind: "nope" },
  ]);
  assert.deepEqual(r.map(x => x.status), [200, 429, 400]);
  assert.equal(r[0].deduplicated, true, "the retried batch reused its ids");
  assert.equal((await client().usage("ts-b")).kinds.premium.used, 6);
});

test("batched consume() calls share one request, each with its own result, in call order", async () => {
  let calls = 0;
  const counting = async (url, init) => { calls++; return fetch(url, init); };
  const c = client({ fetch: counting, batch: { maxWaitMs: 20 } });
  const results = await Promise.all([
    ...Array.from({ length: 61 }, (_, i) => c.consume({ userId: `ts-q-${i}`, kind: "fast", amount: i % 5 + 1 })),
    // One user, three calls: decided in the order they were made.
    ...[4, 4, 4].map(amount => c.consume({ userId: "ts-q-o", kind: "premium", amount })),
  ]);
  assert.equal(calls, 1, "64 calls, one request");
  results.slice(0, 61).forEach((r, i) => {
    assert.deepEqual([r.user_id, r.amount, r.used, r.allowed], [`ts-q-${i}`, i % 5 + 1, i % 5 + 1, true]);
    assert.equal(typeof r.request_id, "string");
    assert.equal(r.status, undefined, "shaped as a single consume's answer");
  });
  assert.deepEqual(results.slice(61).map(r => [r.allowed, r.used]), [[true, 4], [true, 8], [false, 8]]);
});

test("a retried batch of consume() calls counts nothing twice", async () => {
  const lossy = losingFirstAnswer();
  const c = client({ fetch: lossy.fetch, batch: { maxWaitMs: 20 } });
  const results = await Promise.all(Array.from({ length: 10 }, () => c.consume({ userId: "ts-q-r", kind: "fast" })));
  assert.equal(lossy.calls(), 2, "the batch was sent again");
  assert.ok(results.every(r => r.deduplicated === true), "answered from the first attempt's records");
  assert.equal((await client().usage("ts-q-r")).kinds.fast.used, 10);
});

test("an event the service refuses fails its own consume() call only", async () => {
  const c = client({ batch: { maxWaitMs: 20 } });
  const [a, bad, b] = await Promise.allSettled([
    c.consume({ userId: "ts-q-n", kind: "fast" }),
    c.consume({ userId: "ts-q-n", kind: "nope" }),
    c.consume({ userId: "ts-q-n", kind: "fast" }),
  ]);
  assert.deepEqual([a.status, a.value.used, b.status, b.value.used], ["fulfilled", 1, "fulfilled", 2]);
  assert.equal(bad.status, "rejected");
  assert.ok(bad.reason instanceof UsageSyncError);
  assert.deepEqual([bad.reason.status, bad.reason.code], [400, "unknown_kind"]);
  assert.throws(() => client({ batch: { maxEvents: 1001 } }), TypeError);
});

test("check, refund and usage", async () => {
  const c = client();
  const chk = await c.check({ userId: "ts-4", kind: "fast", amount: 50 });
  assert.equal(chk.allowed, true);
  assert.equal(chk.used, 0, "check counts nothing");
  const r = await c.consume({ userId: "ts-4", kind: "fast", amount: 4, requestId: "ts-4-a" });
  // A request id is bound to its request: another user or amount is a
  // conflict that counts and refunds nothing.
  await assert.rejects(c.consume({ userId: "ts-4b", kind: "fast", amount: 4, requestId: "ts-4-a" }),
    e => e instanceof UsageSyncError && e.status === 409 && e.code === "request_id_conflict");
  await assert.rejects(c.refund(r.request_id, { userId: "ts-4b" }),
    e => e.status === 409 && e.code === "request_id_conflict");
  const back = await c.refund(r.request_id, { userId: "ts-4" });
  assert.equal(back.refunded, 4);
  assert.equal(back.used, 0);
  await assert.rejects(c.refund("ts-4-a"), e => e instanceof UsageSyncError && e.status === 409 && e.code === "already_refunded");
  await assert.rejects(c.refund("never"), e => e.status === 404 && e.code === "unknown_request");
  const u = await c.usage("ts-4");
  assert.equal(u.user_id, "ts-4");
  assert.equal(u.kinds.fast.used, 0);
});

test("client mistakes are errors with the service's code and are not retried", async () => {
  let calls = 0;
  const counting = (url, init) => { calls++; return fetch(url, init); };
  const c = client({ fetch: counting });
  await assert.rejects(c.consume({ userId: "ts-5", kind: "nope" }), e => e.status === 400 && e.code === "unknown_kind");
  assert.equal(calls, 1);
  const wrong = new UsageSyncClient({ baseUrl: base, apiToken: "wrong" });
  await assert.rejects(wrong.usage("ts-5"), e => e.status === 401 && e.code === "unauthorized");
});

test("timeouts: fail closed throws, fail open lets the request through uncounted", async () => {
  const hang = (url, init) => new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(init.signal.reason)));
  const closed = client({ fetch: hang, timeoutMs: 50, retries: 1 });
  await assert.rejects(closed.consume({ userId: "ts-6", kind: "fast" }), e => e.status === 0 && e.code === "timeout");
  const open = client({ fetch: hang, timeoutMs: 50, retries: 1, failMode: "open" });
  const r = await open.consume({ userId: "ts-6", kind: "fast" });
  assert.equal(r.allowed, true);
  assert.equal(r.fail_open, true);
  assert.equal((await client().usage("ts-6")).kinds.fast.used, 0);
  const down = new UsageSyncClient({ baseUrl: "http://127.0.0.1:1", retries: 0 });
  await assert.rejects(down.check({ userId: "x", kind: "fast" }), e => e.code === "unreachable");
});

test("admin calls", async () => {
  const c = client();
  const plan = await c.putPlan("ts-team", { limits: { premium: 3, fast: null } });
  assert.deepEqual(plan, { plan: "ts-team", period: "monthly", limits: { premium: 3, fast: null } });
  const u = await c.putUser("ts-7", { plan: "ts-team" });
  assert.equal(u.plan, "ts-team");
  await c.consume({ userId: "ts-7", kind: "premium", amount: 2 });
  assert.equal((await c.syncUser("ts-7")).flushed_units, 2);
  await c.consume({ userId: "ts-7", kind: "fast", amount: 5 });
  const all = await c.syncAll();
  assert.ok(all.flushed_units >= 5);
  const d = await c.diagnose("ts-7");
  assert.equal(d.kinds.premium.persisted, 2);
  assert.equal(d.last_flush.trigger, "manual");
  const list = await c.listUsers({ search: "ts-7" });
  assert.equal(list.matched, 1);
  assert.equal(list.users[0].kinds.fast.used, 5);
  const reset = await c.resetUser("ts-7");
  assert.equal(reset.kinds.premium.used, 0);
  const st = await c.status();
  assert.equal(st.running, true);
  assert.ok(Array.isArray((await c.alerts()).firing));
  assert.deepEqual(await c.resetStats(), { reset: true });
  const ev = await c.evict(0);
  assert.equal(typeof ev.evicted, "number");
  const noAdmin = new UsageSyncClient({ baseUrl: base, apiToken: "api-t" });
  await assert.rejects(noAdmin.status(), e => e.status === 401);
});
