// usage-sync client for Node 18+ and edge runtimes: no dependencies, built
// on fetch. Types: src/index.d.ts (request and response shapes generated
// from the service's OpenAPI document into src/types.d.ts).
//
// Retries: network errors, timeouts and 503s are retried with exponential
// backoff. A consume is retried under the same request_id (generated when
// the caller gives none), so a retry after a lost response never counts
// twice: the service answers it from its record with `deduplicated: true`.
//
// Batching (opt-in, `batch: { maxWaitMs, maxEvents }`): concurrent
// consume() calls are gathered for up to maxWaitMs (or until maxEvents
// wait) and sent as one POST /v1/consume/batch. Each call still gets its
// own result, in its own promise; every event keeps its own request_id,
// so a retried batch counts nothing twice; an event the service refuses
// (an unknown kind, say) fails its own call only.

export class UsageSyncError extends Error {
  /** @param {number} status @param {string} code @param {string} message */
  constructor(status, code, message) {
    super(message);
    this.name = "UsageSyncError";
    this.status = status; // 0 when the service could not be reached
    this.code = code; // the service's error code, or "unreachable" / "timeout"
  }
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

function newRequestId() {
  if (globalThis.crypto && typeof globalThis.crypto.randomUUID === "function") {
    return globalThis.crypto.randomUUID();
  }
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}

export class UsageSyncClient {
  /**
   * @param {object} options
   * @param {string} options.baseUrl e.g. "http://127.0.0.1:8080"
   * @param {string} [options.apiToken] USAGE_SYNC_API_TOKEN of the service
   * @param {string} [options.adminToken] USAGE_SYNC_ADMIN_TOKEN, for admin calls
   * @param {number} [options.timeoutMs=2000] per attempt
   * @param {number} [options.retries=3] attempts after the first
   * @param {number} [options.backoffMs=100] first retry delay; doubles, with jitter
   * @param {"closed"|"open"} [options.failMode="closed"] when the service stays unreachable:
   *   "closed" throws; "open" lets consume/check through with `fail_open: true` (nothing counted)
   * @param {typeof fetch} [options.fetch]
   * @param {{maxWaitMs?: number, maxEvents?: number}} [options.batch] gather concurrent
   *   consume() calls into one batch request: sent after maxWaitMs (default 2) or once
   *   maxEvents (default 100, at most 1000) wait
   */
  constructor(options) {
    if (!options || !options.baseUrl) throw new TypeError("baseUrl is required");
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.apiToken = options.apiToken;
    this.adminToken = options.adminToken;
    this.timeoutMs = options.timeoutMs ?? 2000;
    this.retries = options.retries ?? 3;
    this.backoffMs = options.backoffMs ?? 100;
    this.failMode = options.failMode ?? "closed";
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    if (this.failMode !== "closed" && this.failMode !== "open") {
      throw new TypeError('failMode must be "closed" or "open"');
    }
    this.batch = null;
    if (options.batch) {
      const maxWaitMs = options.batch.maxWaitMs ?? 2;
      const maxEvents = options.batch.maxEvents ?? 100;
      if (!(maxWaitMs >= 0) || !Number.isInteger(maxEvents) || maxEvents < 1 || maxEvents > 1000) {
        throw new TypeError("batch: maxWaitMs must be >= 0 and maxEvents an integer from 1 to 1000");
      }
      this.batch = { maxWaitMs, maxEvents, queue: [], timer: null };
    }
  }

  /** One call with retries; returns { status, body }. */
  async request(method, path, { body, admin = false, ok = [200], seen = {} } = {}) {
    const token = admin ? this.adminToken : this.apiToken;
    const headers = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (token) headers.authorization = `Bearer ${token}`;
    let last;
    for (let attempt = 0; attempt <= this.retries; attempt++) {
      if (attempt > 0) {
        const base = this.backoffMs * 2 ** (attempt - 1);
        await sleep(base / 2 + Math.random() * base / 2);
      }
      let res;
      try {
        res = await this.fetch(this.baseUrl + path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: AbortSignal.timeout(this.timeoutMs),
        });
      } catch (e) {
        const timeout = e && (e.name === "TimeoutError" || e.name === "AbortError");
        seen.ambiguous = true; // the request may have reached the service
        last = new UsageSyncError(0, timeout ? "timeout" : "unreachable",
          timeout ? `no answer within ${this.timeoutMs} ms` : `cannot reach ${this.baseUrl}: ${e && e.message}`);
        continue;
      }
      const text = await res.text();
      let json;
      try { json = text ? JSON.parse(text) : undefined; } catch { json = undefined; }
      if (ok.includes(res.status)) return { status: res.status, body: json ?? text };
      const err = json && json.error ? json.error : { code: "unexpected", message: text.slice(0, 200) };
      last = new UsageSyncError(res.status, err.code, err.message);
      if (res.status !== 503) throw last; // the client's mistake or a final answer: no retry
    }
    throw last;
  }

  failOpen(e, userId, kind, amount, requestId) {
    if (this.failMode === "open" && e instanceof UsageSyncError && (e.status === 0 || e.status === 503)) {
      return { allowed: true, fail_open: true, user_id: userId, kind, amount, request_id: requestId,
               used: 0, limit: null, remaining: null, period_start: "", error: { code: e.code, message: e.message } };
    }
    throw e;
  }

  /** May the user spend `amount` of `kind`? Counted if allowed. */
  async consume({ userId, kind, amount = 1, requestId }) {
    const rid = requestId ?? newRequestId();
    if (this.batch) return this.enqueue({ user_id: userId, kind, amount, request_id: rid });
    try {
      const { body } = await this.request("POST", "/v1/consume", {
        body: { user_id: userId, kind, amount, request_id: rid },
        ok: [200, 429],
      });
      return { ...body, request_id: rid };
    } catch (e) {
      return this.failOpen(e, userId, kind, amount, rid);
    }
  }

  /** Queues one consume for the next batch; resolves with its own result. */
  enqueue(event) {
    const b = this.batch;
    return new Promise((resolve, reject) => {
      b.queue.push({ event, resolve, reject });
      if (b.queue.length >= b.maxEvents) {
        this.sendBatch();
      } else if (b.timer === null) {
        b.timer = setTimeout(() => this.sendBatch(), b.maxWaitMs);
      }
    });
  }

  /** Sends what is queued (at most maxEvents) as one batch request. */
  async sendBatch() {
    const b = this.batch;
    clearTimeout(b.timer);
    b.timer = null;
    const items = b.queue.splice(0, b.maxEvents);
    if (b.queue.length > 0) b.timer = setTimeout(() => this.sendBatch(), b.maxWaitMs);
    if (items.length === 0) return;
    let results;
    try {
      const { body } = await this.request("POST", "/v1/consume/batch", {
        body: { events: items.map(i => i.event) },
      });
      results = body.results;
    } catch (e) {
      // The whole request failed (after its retries): every call fails, or
      // fails open, as a single consume would.
      for (const { event: ev, resolve, reject } of items) {
        try { resolve(this.failOpen(e, ev.user_id, ev.kind, ev.amount, ev.request_id)); } catch (err) { reject(err); }
      }
      return;
    }
    items.forEach(({ event: ev, resolve, reject }, i) => {
      const { status, ...r } = results[i] ?? { status: 0, error: { code: "unexpected", message: "no result for this event" } };
      if (status === 200 || status === 429) {
        resolve({ ...r, request_id: ev.request_id });
        return;
      }
      const err = new UsageSyncError(status, r.error?.code ?? "unexpected", r.error?.message ?? "");
      try { resolve(this.failOpen(err, ev.user_id, ev.kind, ev.amount, ev.request_id)); } catch (e) { reject(e); }
    });
  }

  /**
   * Up to 1000 events in one call, decided in order (each as by consume).
   * Events without a request id get one, so the whole batch can be retried
   * safely. Returns one result per event (`status` 200, 429 or an error).
   */
  async consumeBatch(events) {
    const withIds = events.map(e => ({
      user_id: e.userId, kind: e.kind, amount: e.amount ?? 1, request_id: e.requestId ?? newRequestId(),
    }));
    const { body } = await this.request("POST", "/v1/consume/batch", { body: { events: withIds } });
    return body.results.map((r, i) => ({ ...r, request_id: withIds[i].request_id }));
  }

  /** The same question without counting. */
  async check({ userId, kind, amount = 1 }) {
    try {
      return (await this.request("POST", "/v1/check", { body: { user_id: userId, kind, amount } })).body;
    } catch (e) {
      return this.failOpen(e, userId, kind, amount, undefined);
    }
  }

  /** Gives back the units of a consume, once (retries are safe). With
   * `userId`, the service refuses (409 request_id_conflict) unless the
   * consume was that user's. */
  async refund(requestId, { userId } = {}) {
    const seen = {};
    const body = userId === undefined ? { request_id: requestId } : { request_id: requestId, user_id: userId };
    try {
      return (await this.request("POST", "/v1/refund", { body, seen })).body;
    } catch (e) {
      // An earlier attempt may have landed before its answer was lost: a
      // retry then finds the refund done, which is what the caller wanted.
      if (e instanceof UsageSyncError && e.code === "already_refunded" && seen.ambiguous) {
        return { request_id: requestId, refunded: null, already_refunded: true };
      }
      throw e;
    }
  }

  async usage(userId) {
    return (await this.request("GET", `/v1/users/${encodeURIComponent(userId)}/usage`)).body;
  }

  // ---- admin ------------------------------------------------------------

  async putPlan(name, { limits, period = "monthly" }) {
    return (await this.request("PUT", `/admin/v1/plans/${encodeURIComponent(name)}`, { admin: true, body: { limits, period } })).body;
  }
  async putUser(userId, { plan, limits } = {}) {
    const body = {};
    if (plan !== undefined) body.plan = plan;
    if (limits !== undefined) body.limits = limits;
    return (await this.request("PUT", `/admin/v1/users/${encodeURIComponent(userId)}`, { admin: true, body })).body;
  }
  async resetUser(userId) {
    return (await this.request("POST", `/admin/v1/users/${encodeURIComponent(userId)}/reset`, { admin: true })).body;
  }
  async syncUser(userId) {
    return (await this.request("POST", `/admin/v1/users/${encodeURIComponent(userId)}/sync`, { admin: true })).body;
  }
  async syncAll() {
    return (await this.request("POST", "/admin/v1/sync", { admin: true })).body;
  }
  async listUsers(query = {}) {
    const q = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined).map(([k, v]) => [k, String(v)]));
    return (await this.request("GET", `/admin/v1/users${q.size ? `?${q}` : ""}`, { admin: true })).body;
  }
  async evict(idleSeconds) {
    const q = idleSeconds === undefined ? "" : `?idle_seconds=${idleSeconds}`;
    return (await this.request("POST", `/admin/v1/cache/evict${q}`, { admin: true })).body;
  }
  async status() {
    return (await this.request("GET", "/admin/v1/status", { admin: true })).body;
  }
  async alerts() {
    return (await this.request("GET", "/admin/v1/alerts", { admin: true })).body;
  }
  async diagnose(userId) {
    return (await this.request("GET", `/admin/v1/users/${encodeURIComponent(userId)}/diagnose`, { admin: true })).body;
  }
  async resetStats() {
    return (await this.request("POST", "/admin/v1/stats/reset", { admin: true })).body;
  }
}
