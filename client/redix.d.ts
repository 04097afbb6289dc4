// Types for redix.js, the redix client (served at /client/redix.d.ts).

export interface Clock {
  now(): number;
  setTimeout(f: () => void, ms: number): unknown;
  clearTimeout(t: unknown): void;
  setInterval(f: () => void, ms: number): unknown;
  clearInterval(t: unknown): void;
  random(): number;
}

export interface Options {
  /** Channels to stream from the start. */
  channels?: string[];
  /** 'sse' (one stream for every channel) or 'ws' (the JSON protocol). Default 'sse'. */
  transport?: 'sse' | 'ws';
  /** Reconnect delays in ms, in order; the last repeats. Default [1000, 2000, 5000, 10000, 30000, 60000, 120000]. */
  ladder?: number[];
  /** No delay is longer (ms). Default 300000. */
  maxDelay?: number;
  /** No delay is shorter (ms). Default 1000. */
  minDelay?: number;
  /** Every delay is moved by up to ± this fraction of itself, at random. Default 0.5. */
  jitter?: number;
  /** The delay (before jitter) after a WebSocket 1012 (server restart). Default 2000. */
  restartDelay?: number;
  /** A connection that held this long (ms) restarts the ladder. Default 5000. */
  stableAfter?: number;
  /** Delivered event ids are remembered this long (ms) to drop duplicates. Default 300000. */
  dedupTtl?: number;
  /** …and at most this many. Default 10000. */
  dedupMax?: number;
  /** How often expired ids are swept (ms). Default 30000. */
  sweepEvery?: number;
  /** Latency percentiles cover this many last events. Default 100. */
  latencyWindow?: number;
  /** Health callbacks at most this often for counters (ms); state changes at once. Default 250. */
  healthEvery?: number;
  /** Give up after this many failed attempts in a row. Default Infinity (never). */
  maxAttempts?: number;
  /**
   * A subscription token (redix with auth.subscribe = "token"), or a function
   * returning one (or a promise of one), called before every connection so it
   * can fetch a fresh token. SSE sends it as Authorization: Bearer, a
   * WebSocket as ?token=. Default none.
   */
  token?: string | (() => string | Promise<string>);
  /** Connect in the constructor when channels are given. Default true. */
  autoConnect?: boolean;
  clock?: Clock;
  fetch?: typeof fetch;
  WebSocket?: typeof WebSocket;
}

export interface Message {
  channel: string;
  id: string;
  data: unknown;
}

export interface Latency {
  count: number;
  p50: number | null;
  p90: number | null;
  p99: number | null;
  max: number | null;
}

export interface Health {
  state: 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';
  lastConnectedAt: number | null;
  lastDisconnectedAt: number | null;
  disconnects: number;
  reconnectAttempts: number;
  eventsReceived: number;
  duplicatesDropped: number;
  resets: number;
  lastEventAt: number | null;
  lastError: string | null;
  nextRetryAt: number | null;
  dedupSize: number;
  /** Publish → receive, ms, over the last latencyWindow events that carry a time. */
  latency: Latency;
}

export class RedixClient {
  constructor(base?: string, options?: Options);
  on(type: 'message', fn: (m: Message) => void): () => void;
  on(type: 'reset', fn: (r: { channel: string; reason?: string }) => void): () => void;
  on(type: 'error', fn: (e: { channel?: string; code: string; message: string }) => void): () => void;
  on(type: 'health', fn: (h: Health) => void): () => void;
  /** The server took the subscription (WebSocket ack; SSE: the stream opened). */
  on(type: 'subscribed', fn: (s: { channel: string }) => void): () => void;
  readonly health: Health;
  subscribe(channel: string): void;
  unsubscribe(channel: string): void;
  /** A new token: a live WebSocket refreshes in place ({"type":"auth"}); SSE uses it from its next connection. */
  setToken(token: string | (() => string | Promise<string>)): void;
  /** Sends a live WebSocket a fresh token from the token option (a function is called again). */
  refreshToken(): void;
  connect(): void;
  close(): void;
}

export class Backoff {
  constructor(options?: Options, clock?: Clock);
  attempts: number;
  next(hintMs?: number): number;
  reset(): void;
}

export class DedupCache {
  constructor(max?: number, ttl?: number, clock?: Clock);
  check(key: string): boolean;
  sweep(): void;
  readonly size: number;
}

export class Cursors {
  note(channel: string, id: string): void;
  get(channel: string): string | undefined;
  /** Redis Cluster: the composite cursor an SSE stream of `channels` carried. */
  noteStream(channels: string[], id: string): void;
  streamCursor(channels: string[]): string | undefined;
}

export class LatencyWindow {
  constructor(window?: number);
  add(ms: number): void;
  summary(): Latency;
}

export const DEFAULTS: Readonly<Required<Omit<Options, 'channels' | 'transport' | 'autoConnect' | 'clock' | 'fetch' | 'WebSocket'>>> & { transport: 'sse' };
export function compareIds(a: string, b: string): number;
/** A composite SSE cursor (`c1…`, Redis Cluster), not a plain event id. */
export function isComposite(id: string): boolean;
export function publishedAt(id: string, data: unknown): number | undefined;
export function readSse(
  body: ReadableStream<Uint8Array>,
  onEvent: (e: { event: string; id?: string; data: string; retry?: number }) => void,
): Promise<void>;
export function streamJob(
  base: string,
  query: { q?: string; job?: string },
  onToken: (text: string) => void,
  options?: { fetch?: typeof fetch; signal?: AbortSignal },
): Promise<string | undefined>;
