// What the end-to-end tests share: free ports, polling with a deadline,
// child processes that die with the test.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';

export const DEADLINE_MS = 20000;
export const procs = new Set();

export const freePort = () => new Promise((ok, fail) => {
  const s = createServer();
  s.once('error', fail);
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => ok(port)); });
});

// Resolves with `pred`'s value once it is truthy, polling; fails after
// the deadline.
export async function waitFor(what, pred, ms = DEADLINE_MS) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// Starts `cmd`; resolves once `ready(output)` holds. `p.log()` is what it
// printed; it is killed when the test process ends (`killAll`).
export async function start(cmd, args, ready) {
  const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.add(p);
  p.on('exit', () => procs.delete(p));
  let out = '';
  p.stdout.on('data', (d) => { out += d; });
  p.stderr.on('data', (d) => { out += d; });
  p.log = () => out;
  await waitFor(`${cmd} to start`, () => ready(out));
  return p;
}

export const stop = (p, sig = 'SIGTERM') => new Promise((r) => {
  if (p.exitCode !== null || p.signalCode !== null) return r();
  p.once('exit', r);
  p.kill(sig);
});

export async function killAll() {
  for (const p of [...procs]) await stop(p, 'SIGKILL');
}
