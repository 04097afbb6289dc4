// redix.js — the browser (and Node 20+) client for redix: SSE or WebSocket,
// reconnect with a capped, jittered backoff ladder, lossless resume, TTL- and
// count-bounded dedup, and health metrics. One ES module, no dependencies, no
// build step. Served by redix at /client/redix.js; types in redix.d.ts.
//
//   import { RedixClient } from '/client/redix.js';
//   const c = new RedixClient('', { channels: ['trades:AAPL'], transport: 'ws' });
//   c.on('message', (m) => console.log(m.channel, m.id, m.data));
//   c.on('reset', (r) => reloadStateOf(r.channel));   // events were lost: reload
//   c.on('health', (h) => render(h));
//
// Everything time-based goes through `options.clock` so tests can drive it.

export const DEFAULTS = Object.freeze({
  transport: 'sse',
  ladder: [1000, 2000, 5000, 10000, 30000, 60000, 120000],
  maxDelay: 300000,
  minDelay: 1000,
  jitter: 0.5,
  restartDelay: 2000,
  dedupTtl: 300000,
  dedupMax: 10000,
  sweepEvery: 30000,
  latencyWindow: 100,
  healthEvery: 250,
  maxAttempts: Infinity,
  stableAfter: 5000,
});

const realClock = () => ({
  now: () => Date.now(),
  setTimeout: (f, ms) => setTimeout(f, ms),
  clearTimeout: (t) => clearTimeout(t),
  setInterval: (f, ms) => setInterval(f, ms),
  clearInterval: (t) => clearInterval(t),
  random: () => Math.random(),
});

// Delays through the ladder, then the cap; every delay jittered by up to
// ±jitter of itself, never below minDelay nor above maxDelay.
export class Backoff {
  constructor(opts = {}, clock = realClock()) {
    this.o = { ...DEFAULTS, ...opts };
    this.clock = clock;
    this.attempts = 0;
  }

  // The delay before the next attempt; `hint` (ms) is a server's wish
  // (retry:, Retry-After), which replaces the ladder's step.
  next(hint) {
    const o = this.o;
    const step = hint ?? o.ladder[Math.min(this.attempts, o.ladder.length - 1)] ?? o.maxDelay;
    this.attempts += 1;
    const spread = step * o.jitter;
    const jittered = step - spread + this.clock.random() * 2 * spread;
    return Math.round(Math.min(o.maxDelay, Math.max(o.minDelay, jittered)));
  }

  reset() {
    this.attempts = 0;
  }
}

// Event keys already delivered, bounded by count and by age; swept by the
// client every sweepEvery.
export class DedupCache {
  constructor(max = DEFAULTS.dedupMax, ttl = DEFAULTS.dedupTtl, clock = realClock()) {
    this.max = max;
    this.ttl = ttl;
    this.clock = clock;
    this.seenAt = new Map();
  }

  // True when `key` was delivered within the TTL (a duplicate); else
  // remembers it.
  check(key) {
    const now = this.clock.now();
    const at = this.seenAt.get(key);
    if (at !== undefined && now - at < this.ttl) return true;
    this.seenAt.delete(key);
    this.seenAt.set(key, now);
    while (this.seenAt.size > this.max) {
      this.seenAt.delete(this.seenAt.keys().next().value);
    }
    return false;
  }

  sweep() {
    const cutoff = this.clock.now() - this.ttl;
    for (const [key, at] of this.seenAt) {
      if (at > cutoff) break; // insertion order is age order
      this.seenAt.delete(key);
    }
  }

  get size() {
    return this.seenAt.size;
  }
}

// Event ids: decimal (embedded) or "ms-n" (Redis mode). Compares two ids.
export function compareIds(a, b) {
  const pa = String(a).split('-').map(Number);
  const pb = String(b).split('-').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return 0;
}

// When an event was published, in ms: a Redis stream id's time, else a
// numeric `t` or `ts` (ms) in its data; undefined when unknown.
export function publishedAt(id, data) {
  const m = /^(\d{12,})-\d+$/.exec(String(id));
  if (m) return Number(m[1]);
  const t = data && typeof data === 'object' ? data.t ?? data.ts : undefined;
  if (typeof t === 'number' && t > 1e12) return t;
  const first = Array.isArray(data) ? data[0] : undefined;
  if (first && typeof first.t === 'number' && first.t > 1e12) return first.t;
  return undefined;
}

// A composite cursor (Redis Cluster, an SSE stream of several channels):
// every channel's position in one id, `c1…`; plain ids start with a digit.
export const isComposite = (id) => /^c1/.test(String(id));

// Last id per channel: what every reconnect resumes from.
export class Cursors {
  constructor() {
    this.last = new Map();
    // The last composite cursor an SSE stream carried, and its channels.
    this.stream = undefined;
  }

  // An SSE stream of `channels` carried the composite cursor `id`: it
  // alone says where every one of them stands (a gap may hold one back).
  noteStream(channels, id) {
    this.stream = { key: [...channels].sort().join(','), id: String(id) };
  }

  note(channel, id) {
    const cur = this.last.get(channel);
    if (cur === undefined || compareIds(id, cur) > 0) this.last.set(channel, String(id));
  }

  get(channel) {
    return this.last.get(channel);
  }

  // One cursor for an SSE stream of `channels`: ids grow across channels,
  // so the newest seen on any of them (undefined when none).
  // With Redis Cluster the stream's own composite cursor, while the
  // channels are the same (another set starts without one: a composite
  // cursor names its channel set, and redix refuses it for another).
  streamCursor(channels) {
    if (this.stream) {
      return this.stream.key === [...channels].sort().join(',') ? this.stream.id : undefined;
    }
    let best;
    for (const ch of channels) {
      const id = this.last.get(ch);
      if (id !== undefined && (best === undefined || compareIds(id, best) > 0)) best = id;
    }
    return best;
  }
}

// Percentiles over the last `window` latencies.
export class LatencyWindow {
  constructor(window = DEFAULTS.latencyWindow) {
    this.window = window;
    this.values = [];
  }

  add(ms) {
    this.values.push(ms);
    if (this.values.length > this.window) this.values.shift();
  }

  summary() {
    const s = [...this.values].sort((a, b) => a - b);
    const at = (q) => (s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))] : null);
    return { count: s.length, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: s.length ? s[s.length - 1] : null };
  }
}

// Reads an SSE body (a ReadableStream of bytes) and calls onEvent({event,
// id, data, retry}) per event; comments are skipped.
export async function readSse(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let ev = { event: 'message', data: [], id: undefined, retry: undefined };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      if (line === '') {
        if (ev.data.length || ev.retry !== undefined) onEvent({ ...ev, data: ev.data.join('\n') });
        ev = { event: 'message', data: [], id: undefined, retry: undefined };
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'data') ev.data.push(value);
      else if (field === 'event') ev.event = value;
      else if (field === 'id') ev.id = value;
      else if (field === 'retry' && /^\d+$/.test(value)) ev.retry = Number(value);
    }
  }
}


const httpBase = (base) => (base || '').replace(/\/$/, '');
const wsUrl = (base, token) => {
  const b = httpBase(base) || (typeof location !== 'undefined' ? location.origin : '');
  // A browser WebSocket cannot send headers: the token goes in the query.
  const q = token ? `?token=${encodeURIComponent(token)}` : '';
  return b.replace(/^http/, 'ws') + '/ws' + q;
};

// The client: one connection (an SSE stream of every channel, or a
// WebSocket subscribing each), reconnected for ever unless maxAttempts.
export class RedixClient {
  constructor(base = '', options = {}) {
    this.base = base;
    this.o = { ...DEFAULTS, ...options };
    this.clock = options.clock ?? realClock();
    this.fetch = options.fetch ?? ((...a) => globalThis.fetch(...a));
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.channels = new Set(options.channels ?? []);
    this.listeners = new Map();
    this.backoff = new Backoff(this.o, this.clock);
    this.dedup = new DedupCache(this.o.dedupMax, this.o.dedupTtl, this.clock);
    this.cursors = new Cursors();
    this.latency = new LatencyWindow(this.o.latencyWindow);
    this.h = {
      state: 'idle', lastConnectedAt: null, lastDisconnectedAt: null, disconnects: 0,
      reconnectAttempts: 0, eventsReceived: 0, duplicatesDropped: 0, resets: 0,
      lastEventAt: null, lastError: null, nextRetryAt: null,
    };
    this.conn = null; // the live transport: { close() }
    this.retryTimer = null;
    this.healthTimer = null;
    this.sweeper = this.clock.setInterval(() => this.dedup.sweep(), this.o.sweepEvery);
    this.closed = false;
    if (this.o.autoConnect !== false && this.channels.size) this.connect();
  }

  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type)?.delete(fn);
  }

  emit(type, value) {
    for (const fn of this.listeners.get(type) ?? []) {
      try { fn(value); } catch (e) { console.error('redix listener', e); }
    }
  }

  get health() {
    return { ...this.h, dedupSize: this.dedup.size, latency: this.latency.summary() };
  }

  // Health changes are reported at most every healthEvery ms (state
  // changes at once).
  touch(now) {
    if (now) return this.emit('health', this.health);
    if (this.healthTimer !== null) return;
    this.healthTimer = this.clock.setTimeout(() => {
      this.healthTimer = null;
      this.emit('health', this.health);
    }, this.o.healthEvery);
  }

  setState(state) {
    this.h.state = state;
    this.touch(true);
  }

  subscribe(channel) {
    if (this.channels.has(channel)) return;
    this.channels.add(channel);
    if (this.conn?.subscribe) this.conn.subscribe(channel);
    else this.restart();
  }

  unsubscribe(channel) {
    if (!this.channels.delete(channel)) return;
    if (this.conn?.unsubscribe) this.conn.unsubscribe(channel);
    else this.restart();
  }

  restart() {
    if (this.closed) return;
    this.drop();
    if (this.channels.size) this.connect();
  }

  connect() {
    if (this.closed || this.conn) return;
    this.setState(this.h.disconnects ? 'reconnecting' : 'connecting');
    this.conn = this.o.transport === 'ws' ? this.openWs() : this.openSse();
  }

  // The connection was up: note it and reset the ladder.
  opened() {
    this.h.lastConnectedAt = this.clock.now();
    this.h.nextRetryAt = null;
    this.setState('open');
  }

  // The connection ended (or failed): schedule the next attempt, after
  // `hint` ms when the server gave one.
  lost(why, hint) {
    if (this.closed) return;
    const wasOpen = this.h.state === 'open';
    this.drop();
    if (wasOpen) {
      const now = this.clock.now();
      // Only a connection that held for a while restarts the ladder: a
      // server that accepts and drops at once still gets backed off.
      if (now - this.h.lastConnectedAt >= this.o.stableAfter) this.backoff.reset();
      this.h.disconnects += 1;
      this.h.lastDisconnectedAt = now;
    }
    this.h.lastError = why ?? null;
    if (this.backoff.attempts >= this.o.maxAttempts) return this.setState('closed');
    const delay = this.backoff.next(hint);
    this.h.reconnectAttempts += 1;
    this.h.nextRetryAt = this.clock.now() + delay;
    this.setState('reconnecting');
    this.retryTimer = this.clock.setTimeout(() => {
      this.retryTimer = null;
      this.connect();
    }, delay);
  }

  drop() {
    const conn = this.conn;
    this.conn = null;
    if (conn) conn.close();
    if (this.retryTimer !== null) this.clock.clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  // Closes for good: WebSocket 1000, every timer and listener released.
  close() {
    this.closed = true;
    this.drop();
    this.clock.clearInterval(this.sweeper);
    if (this.healthTimer !== null) this.clock.clearTimeout(this.healthTimer);
    this.healthTimer = null;
    this.h.state = 'closed';
    this.emit('health', this.health);
    this.listeners.clear();
  }

  // One event from either transport.
  deliver(channel, id, data) {
    const now = this.clock.now();
    if (this.dedup.check(`${channel}|${id}`)) {
      this.h.duplicatesDropped += 1;
      return this.touch();
    }
    this.cursors.note(channel, id);
    this.h.eventsReceived += 1;
    this.h.lastEventAt = now;
    const at = publishedAt(id, data);
    if (at !== undefined) this.latency.add(Math.max(0, now - at));
    this.emit('message', { channel, id, data });
    this.touch();
  }

  reset(channel, reason) {
    this.h.resets += 1;
    this.emit('reset', { channel, reason });
    this.touch();
  }

  // A new subscription token (redix with auth.subscribe = "token"): a live
  // WebSocket sends it at once ({"type":"auth"}: refreshed in place, no
  // reconnect); an SSE stream uses it from its next connection (the old
  // stream ends with token_expired and resumes from its last id).
  setToken(token) {
    this.o.token = token;
    this.refreshToken();
  }

  // Sends a live WebSocket a token from options.token (a function is
  // called again), to refresh it before it expires; SSE does nothing.
  refreshToken() {
    if (!this.conn?.auth) return;
    this.withToken((t) => { if (t) this.conn?.auth?.(t); }, (e) => { this.h.lastError = `token: ${e?.message ?? e}`; });
  }

  // Calls use(token) with options.token: a string at once, a function's
  // (possibly async) result otherwise, so every connection can mint a
  // fresh one; fail(error) when the function throws.
  withToken(use, fail) {
    const t = this.o.token;
    if (typeof t !== 'function') return use(t);
    Promise.resolve().then(t).then(use, fail);
  }
}

// The SSE transport: fetch with a streamed body, so redix's retry:,
// reconnect, slow, Retry-After and status codes are all seen.
RedixClient.prototype.openSse = function openSse() {
  const channels = [...this.channels];
  const cursor = this.cursors.streamCursor(channels);
  const q = new URLSearchParams({ channels: channels.join(',') });
  if (cursor !== undefined) q.set('lastEventId', cursor);
  const abort = new AbortController();
  let hint; // the server's retry: (ms)
  let ended = false;
  const finish = (why, h) => {
    if (ended || this.conn !== conn) return;
    ended = true;
    this.lost(why, h);
  };
  const onEvent = (ev) => {
    if (ev.retry !== undefined) hint = ev.retry;
    if (!ev.data) return;
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    // Every data event (`message`, and a job's token/done/error) is a
    // message envelope; redix's own notices are not.
    const resumeFrom = (id) => {
      if (isComposite(id)) return this.cursors.noteStream(channels, id);
      for (const ch of channels) this.cursors.note(ch, id);
    };
    if (msg.type === 'message') {
      // A composite id: the stream's cursor; the event's own id is msg.id.
      if (isComposite(ev.id)) {
        this.cursors.noteStream(channels, ev.id);
        return this.deliver(msg.channel, msg.id, msg.data);
      }
      return this.deliver(msg.channel, ev.id ?? msg.id, msg.data);
    }
    if (ev.event === 'reset') return this.reset(msg.channel, msg.reason);
    if (ev.event === 'error') return this.emit('error', msg);
    if (ev.event === 'slow' && msg.lastEventId) {
      resumeFrom(msg.lastEventId);
      return finish('slow consumer', this.o.minDelay);
    }
    // A restart, or an operator's disconnect (reason "operator"): the
    // retry: it carries is the wait; the stream resumes from the cursor.
    if (ev.event === 'reconnect') {
      const why = msg.reason === 'operator' ? `disconnected by operator: ${msg.message}` : 'server restart';
      return finish(why, ev.retry ?? hint);
    }
    if (ev.event === 'token_expired') {
      // Resume from the id it names with a fresh token: nothing is lost.
      if (msg.lastEventId) resumeFrom(msg.lastEventId);
      return finish('token expired', this.o.minDelay);
    }
  };
  const conn = { close: () => abort.abort() };
  const open = (token) => {
    if (abort.signal.aborted) return;
    const headers = { Accept: 'text/event-stream' };
    if (token) headers.Authorization = `Bearer ${token}`;
    this.fetch(`${httpBase(this.base)}/api/stream?${q}`, {
      headers,
      signal: abort.signal,
      cache: 'no-store',
    }).then(async (res) => {
      if (!res.ok) {
        const after = Number(res.headers.get('Retry-After'));
        return finish(`HTTP ${res.status}`, after > 0 ? after * 1000 : undefined);
      }
      this.opened();
      for (const channel of channels) this.emit('subscribed', { channel });
      await readSse(res.body, onEvent);
      finish('stream ended', hint);
    }).catch((e) => finish(String(e?.message ?? e), hint));
  };
  this.withToken(open, (e) => finish(`token: ${e?.message ?? e}`));
  return conn;
};

// The WebSocket transport: the JSON protocol, each channel subscribed
// with `since` its own last id.
RedixClient.prototype.openWs = function openWs() {
  const state = { ws: null, done: false }; // ws: made once the token is known
  const send = (m) => { if (state.ws?.readyState === 1) state.ws.send(JSON.stringify(m)); };
  const sub = (channel) => {
    const since = this.cursors.get(channel);
    send(since === undefined ? { type: 'subscribe', channel } : { type: 'subscribe', channel, since });
  };
  const conn = {
    subscribe: sub,
    unsubscribe: (channel) => send({ type: 'unsubscribe', channel }),
    auth: (token) => send({ type: 'auth', token }),
    close: () => { state.done = true; try { state.ws?.close(1000, 'bye'); } catch { /* closing */ } },
  };
  const failed = (e) => {
    if (state.done || this.conn !== conn) return;
    state.done = true;
    this.lost(`token: ${e?.message ?? e}`);
  };
  this.withToken((token) => { if (!state.done) state.ws = this.wireWs(conn, state, sub, token); }, failed);
  return conn;
};

// Opens the WebSocket of `conn` and handles what the server says.
RedixClient.prototype.wireWs = function wireWs(conn, state, sub, token) {
  const ws = new this.WebSocket(wsUrl(this.base, token));
  ws.onopen = () => {
    this.opened();
    for (const ch of this.channels) sub(ch);
  };
  ws.onmessage = (e) => {
    let m;
    try { m = JSON.parse(e.data); } catch { return; }
    if (m.type === 'message') this.deliver(m.channel, m.id, m.data);
    else if (m.type === 'batch') for (const b of m.events ?? []) this.deliver(b.channel, b.id, b.data);
    else if (m.type === 'reset') this.reset(m.channel, m.reason);
    else if (m.type === 'subscribed') this.emit('subscribed', { channel: m.channel });
    else if (m.type === 'error') this.emit('error', m);
    else if (m.type === 'unsubscribed' && m.reason) this.emit('error', { channel: m.channel, code: m.reason, message: 'the new token does not allow this channel' });
  };
  ws.onclose = (e) => {
    if (state.done || this.conn !== conn) return;
    state.done = true;
    // Expired: back with a fresh token, each channel resumed by `since`.
    if (e.code === 4001) return this.lost('token expired', this.o.minDelay);
    if (e.code === 4008 && e.reason) {
      // Slow: the reason is the last id received before anything was
      // dropped; each channel resumes from its own last id (not later).
      return this.lost('slow consumer', this.o.minDelay);
    }
    if (e.code === 4000) {
      // An operator ended the connection (POST /api/admin/disconnect); the
      // reason is JSON: come back after its retry (ms), else by the ladder.
      let why = {};
      try { why = JSON.parse(e.reason) ?? {}; } catch { /* not JSON */ }
      return this.lost(`disconnected by operator${why.reason ? `: ${why.reason}` : ''}`, retryHint(e.reason));
    }
    // 1012: the server restarts; come back after its hint (a reason
    // {"retry":MS}, already spread by the server) or soon, jittered.
    const hint = e.code === 1012 ? retryHint(e.reason) ?? this.o.restartDelay : undefined;
    this.lost(`closed ${e.code}${e.reason ? ` ${e.reason}` : ''}`, hint);
  };
  ws.onerror = () => {};
  return ws;
};

// A close reason's {"retry":MS}, if it has one.
function retryHint(reason) {
  try {
    const ms = JSON.parse(reason || 'null')?.retry;
    return Number.isFinite(ms) && ms >= 0 ? ms : undefined;
  } catch {
    return undefined;
  }
}

// Streams one job (`/api/ask?q=` or `?job=`) with fetch; calls onToken(text)
// per token and resolves with the result at `done` (rejects at `error`).
export async function streamJob(base, query, onToken, options = {}) {
  const f = options.fetch ?? ((...a) => globalThis.fetch(...a));
  const q = new URLSearchParams(query);
  const res = await f(`${httpBase(base)}/api/ask?${q}`, { headers: { Accept: 'text/event-stream' }, signal: options.signal });
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let result;
  let failure;
  await readSse(res.body, (ev) => {
    const m = JSON.parse(ev.data || '{}').data ?? {};
    if (ev.event === 'token') onToken(m.text ?? '');
    else if (ev.event === 'done') result = m.result;
    else if (ev.event === 'error') failure = new Error(`${m.code}: ${m.message}`);
  });
  if (failure) throw failure;
  return result;
}
