// End to end in headless Chromium: the demo page from a real redix (Redis
// mode, two nodes on one redis-server), real trades from the built-in
// simulator, a real job, and a restart of the page's node mid-stream.
//
//   REDIX_BIN=target/debug/redix node --test client/e2e/
//
// Needs /usr/bin/chromium and playwright-core (.ci/test installs both).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';

import { chromium } from 'playwright-core';

import { DEADLINE_MS, freePort, killAll, procs, start, stop, waitFor } from './support.mjs';

const BIN = resolve(process.env.REDIX_BIN ?? 'target/debug/redix');
// In Redis mode jobs are run by workers: the example worker (cargo build --example worker).
const WORKER = resolve(process.env.WORKER_BIN ?? 'target/debug/examples/worker');
const OUT = resolve(process.env.E2E_OUT ?? 'target/e2e');
// In the page: collect `seq` events' numbers; resolves once subscribed.
function subscribeSeq() {
  window.seq = [];
  window.redix.on('message', (m) => { if (m.channel === 'seq') window.seq.push(m.data.n); });
  return new Promise((done, fail) => {
    setTimeout(() => fail(new Error('not subscribed to seq in 10 s')), 10000);
    window.redix.on('subscribed', (s) => { if (s.channel === 'seq') done(); });
    window.redix.subscribe('seq');
  });
}


let redisPort;
let browser;

async function node(port) {
  const args = ['--listen', `127.0.0.1:${port}`, '--redis', `redis://127.0.0.1:${redisPort}`,
    '--set', 'market.lease_ms=1000', '--set', 'shutdown.drain_ms=200', '--set', 'limits.ws_per_ip=1000',
    // Room for what is published while the node restarts; reconnect hints of 0.5–1 s.
    '--set', 'history.max_events=1000', '--set', 'sse.retry_ms=500', '--set', 'sse.retry_jitter_ms=500'];
  return start(BIN, args, (out) => out.includes('redix listening on'));
}

async function publish(port, channel, data, id) {
  const res = await fetch(`http://127.0.0.1:${port}/api/publish`, {
    method: 'POST', body: JSON.stringify({ channel, data, id }),
  });
  return res.status;
}

before(async () => {
  mkdirSync(OUT, { recursive: true });
  redisPort = await freePort();
  await start('redis-server', ['--port', String(redisPort), '--save', '', '--appendonly', 'no'],
    (out) => out.includes('Ready to accept connections'));
  // One worker for the page's asks (it logs when it has joined the group).
  const worker = spawn(WORKER, ['--redis', `redis://127.0.0.1:${redisPort}`, '--name', 'e2e', '--token-ms', '20'], { stdio: 'ignore' });
  procs.add(worker);
  worker.on('exit', () => procs.delete(worker));
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
});

after(async () => {
  await browser?.close();
  await killAll();
});

test('the page streams trades and an answer, and survives a restart of its node with no gap and no duplicate', async () => {
  const [portA, portB] = [await freePort(), await freePort()];
  let a = await node(portA);
  const b = await node(portB);
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`http://127.0.0.1:${portA}/?symbols=AAPL,MSFT`);
  // Trades tick.
  await page.waitForFunction(() => Number(document.querySelector('tr[data-symbol=AAPL] .n')?.textContent) > 0, null, { timeout: DEADLINE_MS });
  // An ask streams to its end.
  await page.click('#ask button');
  await page.waitForSelector('#answer[data-state=done]', { timeout: DEADLINE_MS });
  const answer = await page.textContent('#answer');
  assert.match(answer, /^Demo answer to "What does redix do\?": /);
  // Numbered events, published on the other node all along.
  await page.evaluate(subscribeSeq);
  let n = 0;
  let publishing = true;
  const publisher = (async () => {
    while (publishing) {
      n += 1;
      while ((await publish(portB, 'seq', { n }, `seq-${n}`)) !== 200) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  await page.waitForFunction(() => window.seq.length >= 20, null, { timeout: DEADLINE_MS });
  const before = await page.evaluate(() => window.seq.length);
  // Restart the page's node: a real SIGTERM (the WebSocket gets 1012),
  // then a new process on the same port.
  const stopped = Date.now();
  await stop(a);
  a = await node(portA);
  await page.waitForFunction(() => window.redix.health.state === 'open' && window.redix.health.disconnects >= 1, null, { timeout: DEADLINE_MS });
  const back = await page.evaluate(() => window.redix.health.lastConnectedAt);
  await page.waitForFunction((k) => window.seq.length >= k + 40, before, { timeout: DEADLINE_MS });
  publishing = false;
  await publisher;
  await page.waitForFunction((k) => window.seq.length >= k, n, { timeout: DEADLINE_MS }).catch(async (e) => {
    const got = await page.evaluate(() => [window.seq.length, window.seq.slice(-5), JSON.stringify(window.redix.health)]);
    throw new Error(`${e.message}: published ${n}, got ${got}; node log: ${a.log().slice(-2000)}`);
  });
  const seq = await page.evaluate(() => window.seq);
  const health = await page.evaluate(() => window.redix.health);
  const dupes = seq.length - new Set(seq).size;
  const gaps = seq.slice(1).filter((v, i) => v !== seq[i] + 1).length;
  console.log(`restart: reconnected ${back - stopped} ms after SIGTERM; seq events ${before} before, ${seq.length - before} after; duplicates ${dupes}, gaps ${gaps}; client dropped ${health.duplicatesDropped} duplicates; health ${JSON.stringify(health)}`);
  assert.equal(dupes, 0);
  assert.equal(gaps, 0);
  assert.deepEqual(seq, Array.from({ length: seq.length }, (_, i) => seq[0] + i));
  // The health panel shows the reconnect.
  const shown = await page.textContent('dd[data-k=disconnects]');
  assert.ok(Number(shown) >= 1, `panel shows ${shown}`);
  const shot = `${OUT}/demo.png`;
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot: ${shot}`);
  assert.deepEqual(errors, []);
  await page.close();
  await stop(a);
  await stop(b);
});

test('a 4008 slow close resumes from the id it names', async () => {
  const port = await freePort();
  const a = await node(port);
  const page = await browser.newPage();
  let routed;
  await page.routeWebSocket(/\/ws$/, (ws) => {
    const server = ws.connectToServer();
    routed = { ws, server, lastId: null };
    server.onMessage((m) => {
      try { const v = JSON.parse(m); if (v.type === 'message' && v.channel === 'seq') routed.lastId = v.id; } catch { /* passthrough */ }
      ws.send(m);
    });
    ws.onMessage((m) => server.send(m));
  });
  await page.goto(`http://127.0.0.1:${port}/?symbols=AAPL`);
  await page.evaluate(subscribeSeq);
  for (let i = 1; i <= 10; i++) assert.equal(await publish(port, 'seq', { n: i }), 200);
  await page.waitForFunction(() => window.seq.length === 10, null, { timeout: DEADLINE_MS });
  // The "server" says: too slow, resume from the last id you got.
  const first = routed;
  first.ws.close({ code: 4008, reason: first.lastId });
  first.server.close();
  for (let i = 11; i <= 20; i++) assert.equal(await publish(port, 'seq', { n: i }), 200);
  await waitFor('a new WebSocket', () => routed !== first);
  await page.waitForFunction(() => window.seq.length >= 20, null, { timeout: DEADLINE_MS });
  const seq = await page.evaluate(() => window.seq);
  assert.deepEqual(seq, Array.from({ length: 20 }, (_, i) => i + 1), 'everything once, in order');
  await page.close();
  await stop(a);
});
