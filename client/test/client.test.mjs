// Unit tests of redix.js with Node's test runner and a fake clock:
// node --test client/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  Backoff, DedupCache, Cursors, LatencyWindow, RedixClient, compareIds, isComposite, publishedAt, DEFAULTS,
} from '../redix.js';

// Virtual time: timers run when advance() passes them, in order.
class FakeClock {
  constructor(random = () => 0.5) {
    this.t = 1_700_000_000_000;
    this.timers = new Map();
    this.nextId = 1;
    this.random = random;
  }
  now() { return this.t; }
  setTimeout(f, ms) { const id = this.nextId++; this.timers.set(id, { at: this.t + ms, f }); return id; }
  clearTimeout(id) { this.timers.delete(id); }
  setInterval(f, ms) {
    const id = this.nextId++;
    const tick = () => { this.timers.set(id, { at: this.t + ms, f: () => { tick(); f(); } }); };
    tick();
    return id;
  }
  clearInterval(id) { this.timers.delete(id); }
  // Runs every timer due within `ms`, in time order.
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next;
      for (const [id, tm] of this.timers) if (tm.at <= end && (!next || tm.at < next[1].at)) next = [id, tm];
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].f();
    }
    this.t = end;
  }
  // The delay of the one pending one-shot timer after `now`, if any.
  pending() { return [...this.timers.values()].map((t) => t.at - this.t); }
}

// A WebSocket double: records what the client sends and lets tests play
// the server.
class FakeWs {
  static all = [];
  constructor(url) { this.url = url; this.sent = []; this.readyState = 0; this.closedWith = null; FakeWs.all.push(this); }
  send(text) { this.sent.push(JSON.parse(text)); }
  close(code, reason) { this.closedWith = { code, reason }; this.readyState = 3; }
  open() { this.readyState = 1; this.onopen?.(); }
  message(obj) { this.onmessage?.({ data: JSON.stringify(obj) }); }
  serverClose(code, reason = '') { this.readyState = 3; this.onclose?.({ code, reason }); }
}

const wsClient = (clock, opts = {}) => {
  FakeWs.all = [];
  return new RedixClient('http://h:1', { transport: 'ws', channels: ['a', 'b'], clock, WebSocket: FakeWs, ...opts });
};
const last = () => FakeWs.all[FakeWs.all.length - 1];
const nextDelay = (clock) => Math.min(...clock.pending().filter((d) => d >= 1000 && d < DEFAULTS.sweepEvery));

test('the ladder grows step by step, then holds at its last step, within the cap', () => {
  const b = new Backoff({}, new FakeClock(() => 0.5));
  const seen = Array.from({ length: 9 }, () => b.next());
  assert.deepEqual(seen, [1000, 2000, 5000, 10000, 30000, 60000, 120000, 120000, 120000]);
  const capped = new Backoff({ ladder: [1000, 600000] }, new FakeClock(() => 0.5));
  capped.next();
  assert.equal(capped.next(), 300000, 'maxDelay caps a step');
  b.reset();
  assert.equal(b.next(), 1000);
});

test('jitter moves every delay within ±jitter, never below 1 s nor above the cap', () => {
  const low = new Backoff({}, new FakeClock(() => 0));
  const high = new Backoff({}, new FakeClock(() => 0.999999));
  const lows = Array.from({ length: 8 }, () => low.next());
  const highs = Array.from({ length: 8 }, () => high.next());
  assert.deepEqual(lows, [1000, 1000, 2500, 5000, 15000, 30000, 60000, 60000], 'half of the step, floored at 1 s');
  assert.deepEqual(highs, [1500, 3000, 7500, 15000, 45000, 90000, 180000, 180000]);
  const tiny = new Backoff({ ladder: [10] }, new FakeClock(() => 0));
  assert.equal(tiny.next(), 1000, 'never below minDelay');
  const hinted = new Backoff({}, new FakeClock(() => 0.999999));
  assert.equal(hinted.next(400000), 300000, 'a hint is capped too');
});

test('dedup forgets after its TTL, holds at most its count, and sweeps by age', () => {
  const clock = new FakeClock();
  const d = new DedupCache(3, 1000, clock);
  assert.equal(d.check('a|1'), false);
  assert.equal(d.check('a|1'), true, 'a duplicate within the TTL');
  clock.advance(1000);
  assert.equal(d.check('a|1'), false, 'expired: delivered again');
  d.check('a|2'); d.check('a|3'); d.check('a|4');
  assert.equal(d.size, 3, 'bounded by count');
  assert.equal(d.check('a|2'), true);
  clock.advance(999);
  d.check('a|5');
  clock.advance(1);
  d.sweep();
  assert.equal(d.size, 1, 'only the young one is left');
});

test('ids compare in both formats; publish times come from stream ids or data', () => {
  assert.equal(compareIds('9', '10'), -1);
  assert.equal(compareIds('1795500650271-2', '1795500650271-10'), -1);
  assert.equal(compareIds('1795500650272-0', '1795500650271-10'), 1);
  assert.equal(publishedAt('1795500650271-0', {}), 1795500650271);
  assert.equal(publishedAt('17', { t: 1795500650000 }), 1795500650000);
  assert.equal(publishedAt('17', [{ s: 'AAPL', t: 1795500650001 }]), 1795500650001);
  assert.equal(publishedAt('17', { n: 1 }), undefined);
  const c = new Cursors();
  c.note('a', '5'); c.note('b', '9'); c.note('a', '3');
  assert.equal(c.get('a'), '5', 'never goes back');
  assert.equal(c.streamCursor(['a', 'b']), '9');
  assert.equal(c.streamCursor(['x']), undefined);
  const l = new LatencyWindow(3);
  [5, 1, 9, 7].forEach((v) => l.add(v));
  assert.deepEqual(l.summary(), { count: 3, p50: 7, p90: 9, p99: 9, max: 9 });
});

test('a reconnect resumes every channel from its own last id, and drops duplicates', () => {
  const clock = new FakeClock();
  const c = wsClient(clock);
  const got = [];
  c.on('message', (m) => got.push(`${m.channel}:${m.id}`));
  last().open();
  assert.deepEqual(last().sent, [{ type: 'subscribe', channel: 'a' }, { type: 'subscribe', channel: 'b' }]);
  last().message({ type: 'message', channel: 'a', id: '10', data: 1 });
  last().message({ type: 'message', channel: 'b', id: '12', data: 2 });
  last().serverClose(1006);
  assert.equal(c.health.state, 'reconnecting');
  clock.advance(nextDelay(clock));
  last().open();
  assert.deepEqual(last().sent, [
    { type: 'subscribe', channel: 'a', since: '10' },
    { type: 'subscribe', channel: 'b', since: '12' },
  ]);
  last().message({ type: 'message', channel: 'a', id: '10', data: 1 });
  last().message({ type: 'message', channel: 'a', id: '13', data: 3 });
  assert.deepEqual(got, ['a:10', 'b:12', 'a:13']);
  const h = c.health;
  assert.equal(h.duplicatesDropped, 1);
  assert.equal(h.disconnects, 1);
  assert.equal(h.reconnectAttempts, 1);
  assert.equal(h.eventsReceived, 3);
  c.close();
});

test('a reset reaches the application as an event', () => {
  const c = wsClient(new FakeClock());
  const resets = [];
  c.on('reset', (r) => resets.push(r.channel));
  last().open();
  last().message({ type: 'reset', channel: 'b' });
  assert.deepEqual(resets, ['b']);
  assert.equal(c.health.resets, 1);
  c.close();
});

test('server hints: 1012 comes back after the restart delay with jitter, 4008 at once', () => {
  const clock = new FakeClock(() => 0);
  const c = wsClient(clock, { restartDelay: 4000 });
  last().open();
  last().serverClose(1012, 'restart');
  assert.equal(nextDelay(clock), 2000, 'restartDelay less the jitter');
  clock.advance(2000);
  last().open();
  last().serverClose(4008, '17');
  assert.equal(nextDelay(clock), 1000, 'slow: back after minDelay');
  clock.advance(1000);
  last().open();
  last().serverClose(1012, '{"retry":7000}');
  assert.equal(nextDelay(clock), 3500, "the server's paced hint, less the jitter");
  c.close();
});

test('an operator disconnect (4000) comes back after its retry, else by the ladder', () => {
  const clock = new FakeClock(() => 0.5);
  const c = wsClient(clock);
  last().open();
  last().message({ type: 'message', channel: 'a', id: '5', data: {} });
  last().serverClose(4000, JSON.stringify({ reason: 'maintenance', retry: 8000, lastEventId: '5' }));
  assert.equal(nextDelay(clock), 8000, 'the hint replaces the ladder step');
  assert.equal(c.health.lastError, 'disconnected by operator: maintenance');
  clock.advance(8000);
  last().open();
  assert.deepEqual(last().sent[0], { type: 'subscribe', channel: 'a', since: '5' }, 'resumes');
  last().serverClose(4000, 'not json');
  assert.equal(nextDelay(clock), DEFAULTS.ladder[1], 'no hint: the next ladder step');
  c.close();
});

test('SSE: Retry-After and event: reconnect set the next delay; the cursor resumes', async () => {
  const clock = new FakeClock(() => 0.5);
  const calls = [];
  const bodies = [
    () => new Response('{}', { status: 503, headers: { 'Retry-After': '7' } }),
    () => sse('retry: 3000\n\nid: 41\nevent: message\ndata: {"type":"message","channel":"a","id":"41","data":{}}\n\nevent: reconnect\nretry: 9000\ndata: {}\n\n'),
    () => sse(''),
  ];
  const fetch = async (url) => { calls.push(url); return bodies[calls.length - 1](); };
  const c = new RedixClient('http://h:1', { channels: ['a'], clock, fetch });
  await settle();
  assert.equal(nextDelay(clock), 7000, 'Retry-After');
  clock.advance(7000);
  await settle();
  assert.equal(nextDelay(clock), 9000, 'the reconnect event\'s retry');
  clock.advance(9000);
  await settle();
  assert.match(calls[2], /lastEventId=41/);
  assert.equal(c.health.eventsReceived, 1);
  c.close();
});

test('close() says 1000 and leaves no timer or listener behind', () => {
  const clock = new FakeClock();
  const c = wsClient(clock);
  c.on('message', () => {});
  last().open();
  last().message({ type: 'message', channel: 'a', id: '1', data: 1 });
  const ws = last();
  c.close();
  assert.deepEqual(ws.closedWith, { code: 1000, reason: 'bye' });
  assert.equal(clock.timers.size, 0, 'no timer left');
  assert.equal(c.listeners.size, 0);
  clock.advance(600000);
  assert.equal(FakeWs.all.length, 1, 'no reconnect after close');
});

test('fifty clients told to reconnect at once spread over the jitter window', () => {
  const clock = new FakeClock(Math.random);
  const delays = [];
  for (let i = 0; i < 50; i++) {
    const mine = clockView(clock);
    const c = wsClient(mine, { restartDelay: 2000 });
    last().open();
    last().serverClose(1012, 'restart');
    delays.push(nextDelay(mine));
    c.close();
  }
  const spread = Math.max(...delays) - Math.min(...delays);
  console.log(`50 reconnects after 1012: ${Math.min(...delays)}..${Math.max(...delays)} ms, spread ${spread} ms (window 1000..3000)`);
  assert.ok(delays.every((d) => d >= 1000 && d <= 3000), String(delays));
  assert.ok(spread > 1000, `spread ${spread} ms`);
});

test('tokens: a WebSocket sends its token in the query, refreshes in place, and after 4001 comes back with a fresh one', async () => {
  const clock = new FakeClock(() => 0.5);
  let minted = 0;
  const c = wsClient(clock, { token: async () => `t${++minted}` });
  await settle();
  assert.equal(last().url, 'ws://h:1/ws?token=t1');
  last().open();
  last().message({ type: 'message', channel: 'a', id: '5', data: {} });
  c.refreshToken();
  await settle();
  assert.deepEqual(last().sent.at(-1), { type: 'auth', token: 't2' }, 'refreshed in place');
  c.setToken('fixed');
  assert.deepEqual(last().sent.at(-1), { type: 'auth', token: 'fixed' });
  c.setToken(async () => `t${++minted}`);
  await settle();
  assert.deepEqual(last().sent.at(-1), { type: 'auth', token: 't3' });
  last().serverClose(4001, 'token expired');
  assert.equal(nextDelay(clock), 1000, 'back after minDelay');
  clock.advance(1000);
  await settle();
  assert.equal(last().url, 'ws://h:1/ws?token=t4', 'a fresh token for the new connection');
  last().open();
  assert.deepEqual(last().sent[0], { type: 'subscribe', channel: 'a', since: '5' });
  c.close();
});

test('tokens: SSE sends Authorization: Bearer, and token_expired resumes from the id it names', async () => {
  const clock = new FakeClock(() => 0.5);
  const calls = [];
  const bodies = [
    () => sse('id: 7\nevent: token_expired\ndata: {"reason":"token_expired","lastEventId":"7"}\n\n'),
    () => sse(''),
  ];
  const fetch = async (url, init) => { calls.push({ url, auth: init.headers.Authorization }); return bodies[calls.length - 1](); };
  let minted = 0;
  const c = new RedixClient('http://h:1', { channels: ['a'], clock, fetch, token: () => `t${++minted}` });
  await settle();
  assert.equal(calls[0].auth, 'Bearer t1');
  assert.doesNotMatch(calls[0].url, /token=/, 'not in the URL, where logs keep it');
  assert.equal(nextDelay(clock), 1000);
  assert.equal(c.health.lastError, 'token expired');
  clock.advance(1000);
  await settle();
  assert.equal(calls[1].auth, 'Bearer t2');
  assert.match(calls[1].url, /lastEventId=7/);
  c.close();
});

// Each client its own timer table on one virtual time.
function clockView(clock) {
  const mine = new FakeClock(clock.random);
  mine.t = clock.t;
  return mine;
}

function sse(text) {
  return new Response(new Blob([text]).stream(), { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
}

// Lets promise chains (fetch, the body read) run.
async function settle() {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

test('SSE with Redis Cluster: the composite id is the stream\'s cursor; messages keep their own ids', async () => {
  const clock = new FakeClock(() => 0.5);
  const calls = [];
  const msg = (ch, id, cursor) =>
    `id: ${cursor}\nevent: message\ndata: {"type":"message","channel":"${ch}","id":"${id}","data":{}}\n\n`;
  const bodies = [
    () => sse(msg('b', '1795500650271-0', 'c1Ab_-.Q8oSPHN..0') + msg('a', '1795500650272-0', 'c1Ab_-.Q8oSPHO.0.1')),
    () => sse('event: slow\ndata: {"reason":"slow consumer","lastEventId":"c1Ab_-.Q8oSPHO.0.1"}\n\n'),
    () => sse(''),
  ];
  const fetch = async (url) => { calls.push(url); return bodies[calls.length - 1](); };
  const c = new RedixClient('http://h:1', { channels: ['b', 'a'], clock, fetch });
  const got = [];
  c.on('message', (m) => got.push(`${m.channel} ${m.id}`));
  await settle();
  assert.deepEqual(got, ['b 1795500650271-0', 'a 1795500650272-0']);
  assert.equal(c.cursors.get('a'), '1795500650272-0');
  clock.advance(60_000);
  await settle();
  assert.match(calls[1], /lastEventId=c1Ab_-.Q8oSPHO.0.1(&|$)/);
  clock.advance(60_000);
  await settle();
  assert.match(calls[2], /lastEventId=c1Ab_-.Q8oSPHO.0.1(&|$)/, 'slow names the cursor to resume from');
  assert.ok(isComposite('c1x') && !isComposite('1795500650271-0') && !isComposite('42'));
  const cursors = new Cursors();
  cursors.noteStream(['x', 'y'], 'c1AAAA.1.0.');
  assert.equal(cursors.streamCursor(['y', 'x']), 'c1AAAA.1.0.');
  assert.equal(cursors.streamCursor(['x', 'z']), undefined, 'another set starts without it');
  c.close();
});
