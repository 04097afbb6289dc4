// End to end with a real EventSource (npm `eventsource`, the WHATWG
// client for Node): an operator's disconnect of its channel mid-stream
// (POST /api/admin/disconnect with a reconnect hint) makes it reconnect
// with Last-Event-ID, and it loses nothing: every numbered event exactly
// once, in order, while the publisher never paused.
//
//   REDIX_BIN=target/debug/redix node --test client/e2e/
//
// Needs npm's `eventsource` (.ci/test installs it).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { resolve } from 'node:path';

import { EventSource } from 'eventsource';

import { DEADLINE_MS, killAll, start, waitFor } from './support.mjs';

const BIN = resolve(process.env.REDIX_BIN ?? 'target/debug/redix');
// redix on a port the kernel picks; resolves with its address once it
// prints `redix listening on`.
async function startRedix(args) {
  const listening = (out) => /redix listening on (\S+)/.exec(out)?.[1];
  const p = await start(BIN, ['--listen', '127.0.0.1:0', '--workers', '2', ...args], listening);
  return { p, base: `http://${listening(p.log())}` };
}

after(killAll);

const post = (url, body) => fetch(url, { method: 'POST', body: JSON.stringify(body) })
  .then(async (res) => ({ status: res.status, body: await res.json() }));

test('an operator disconnect makes a real EventSource resume with Last-Event-ID and lose nothing', async () => {
  const { base, p } = await startRedix([]);
  const requests = [];
  const es = new EventSource(`${base}/api/stream?channels=seq`, {
    // The library's own fetch, watched: what each (re)connect sends.
    fetch: (url, init) => {
      requests.push({ ...init.headers });
      return fetch(url, init);
    },
  });
  const got = [];
  const reconnects = [];
  let opens = 0;
  es.addEventListener('open', () => { opens += 1; });
  es.addEventListener('message', (e) => got.push({ n: JSON.parse(e.data).data.n, id: e.lastEventId }));
  es.addEventListener('reconnect', (e) => reconnects.push({ data: JSON.parse(e.data), id: e.lastEventId }));
  try {
    await waitFor('the stream to open', () => opens === 1);
    const TOTAL = 80;
    let published = 0;
    const publisher = (async () => {
      for (let n = 1; n <= TOTAL; n++) {
        const res = await post(`${base}/api/publish`, { channel: 'seq', data: { n } });
        assert.equal(res.status, 200, JSON.stringify(res.body));
        published = n;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    await waitFor('20 events', () => got.length >= 20);
    const cut = await post(`${base}/api/admin/disconnect`, { channel: 'seq', reason: 'rebalance', retry_ms: 200 });
    assert.equal(cut.status, 200, JSON.stringify(cut.body));
    assert.equal(cut.body.disconnected, 1);
    const cutAt = published;
    await publisher;
    await waitFor(`all ${TOTAL} events (have ${got.length})`, () => got.length >= TOTAL);
    assert.ok(cutAt < TOTAL, `the disconnect came mid-stream (after ${cutAt} of ${TOTAL})`);
    assert.deepEqual(got.map((e) => e.n), Array.from({ length: TOTAL }, (_, i) => i + 1), 'every event once, in order');
    assert.equal(opens, 2, 'one reconnect');
    assert.equal(reconnects.length, 1);
    assert.equal(reconnects[0].data.reason, 'operator');
    assert.equal(reconnects[0].data.message, 'rebalance');
    assert.equal(reconnects[0].data.retry, 200);
    // The second request resumed from the last event the first delivered.
    assert.equal(requests.length, 2);
    assert.equal(requests[0]['Last-Event-ID'], undefined);
    const resumeId = requests[1]['Last-Event-ID'];
    assert.equal(resumeId, reconnects[0].id, 'the id the reconnect event named');
    const at = got.findIndex((e) => e.id === resumeId);
    assert.ok(at >= 19, `it names an event the client had before the cut (index ${at})`);
    console.log(`eventsource: disconnected after event ${cutAt} of ${TOTAL}; resumed with Last-Event-ID ${resumeId} (event ${at + 1})`);
  } finally {
    es.close();
    p.kill('SIGKILL');
  }
});
