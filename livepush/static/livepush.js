// livepush.js — the browser client for a livepush feed (an ES module; no build step, no deps).
//
//   import { subscribe } from "https://push.example/v1/livepush.js";
//   const feed = subscribe("demo", { since: 41, epoch: "e1" });
//   feed.on("created", (ev) => show(ev.entry));   // also "updated", "deleted", "meta", "purged"
//   feed.on("reset", (snapshot) => redraw(snapshot));
//   feed.on("status", ({ status, transport }) => ...);  // connecting|live|reconnecting|offline|closed
//   feed.close();
//
// Options: since, epoch (where to resume; absent = from now), baseUrl (default: the
// origin this module was loaded from), transport ("auto" | "ws" | "sse"; a page URL
// with ?transport=sse or ?transport=ws overrides "auto", for tests and support),
// receipts (ask the server for propagation receipts; WebSocket only; needs `token`, a
// publisher token), snapshotLimit, token.
//
// token: a private feed's reader token (a JWT) or a publisher token, as a string, or a
// function (async or not) that returns one. The function is called before the first
// connection, and again whenever the token runs out: the server's `unsubscribed` with
// reason `token_expired`, a refusal (`unauthorized`), or a JWT whose `exp` has passed
// before a reconnect. The subscription then continues from the last seq and epoch, so
// nothing is missed. With a token, the WebSocket subscribes by message and never puts
// it in a URL; SSE can only send it as `?token=` (livepush's access logs redact it).
// A token the server keeps refusing ends the subscription with status "denied".
//
// Guarantee to the page: events arrive in seq order, each once. A duplicate (seq <= last)
// is dropped; a hole makes the client reconnect from its last seq so the server replays
// it; a `reset` makes it reload the snapshot, hand it to "reset" listeners, and resume
// from the snapshot's head_seq and epoch.

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30_000;
const CONNECT_TIMEOUT_MS = 10_000;
const PONG_TIMEOUT_MS = 5_000;
// WebSocket attempts that fail before ever opening, while no WebSocket of this feed has
// opened, before we call WebSocket blocked (a proxy that strips Upgrade) and use SSE.
const BLOCKED_AFTER = 2;

// Every event type takes its place in the seq order, those a page ignores included:
// "meta" (feed.updated: the feed's title, description, status) and "purged" (what a
// purged entry's events became in history; replays carry it).
const EVENT_NAMES = {
  "entry.created": "created",
  "entry.updated": "updated",
  "entry.deleted": "deleted",
  "feed.updated": "meta",
  "entry.purged": "purged",
};
// Not "error": that name is EventSource's own connection-error event, which has no data.
const SSE_TYPES = ["message", "subscribed", "reset", "receipt", "unsubscribed", ...Object.keys(EVENT_NAMES)];
// A JWT this close to its `exp` is renewed before a connection rather than sent.
const TOKEN_MARGIN_MS = 5_000;

export function subscribe(feed, options = {}) {
  return new Feed(feed, options);
}

export class Feed {
  #listeners = new Map();
  #options;
  #base;
  #lastSeq; // seq of the last event handed to the page; null until known
  #epoch;
  #transport; // "ws" or "sse": the one in use or about to be tried
  #fallback; // may we switch from WebSocket to SSE?
  #conn = null; // { kind, close(), probe() }: the live connection, if any
  #timer = null; // the pending reconnect
  #attempt = 0; // failed attempts since the last successful subscribe
  #wsOpenedOnce = false;
  #wsFailedBeforeOpen = 0;
  #needsSnapshot = false;
  #connecting = false; // a snapshot reload is in flight
  #status = null;
  #reported = null; // the status and transport listeners last heard, as one string
  #closed = false;
  #token = null; // the token in use (from options.token), once known
  #renewToken = false; // the next connection asks options.token for a fresh one
  #refusals = 0; // refusals of this feed since a token last worked

  constructor(feed, options) {
    this.feed = feed;
    this.#options = options;
    this.#lastSeq = options.since ?? null;
    this.#epoch = options.epoch ?? null;
    this.#base = new URL(options.baseUrl ?? "/", import.meta.url);
    const choice = chooseTransport(options.transport);
    this.#transport = choice === "sse" ? "sse" : "ws";
    this.#fallback = choice === "auto" && typeof EventSource !== "undefined";
    addEventListener("online", this.#wake);
    addEventListener("offline", this.#wentOffline);
    document.addEventListener("visibilitychange", this.#wake);
    if (typeof options.token === "string") this.#token = options.token;
    this.#setStatus("connecting");
    this.#connect();
  }

  /** Call fn for every event of `type`; returns a function that stops it. */
  on(type, fn) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this.#listeners.get(type)?.delete(fn);
  }

  get status() { return this.#status; }
  get transport() { return this.#transport; }
  get position() { return { seq: this.#lastSeq, epoch: this.#epoch }; }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#drop();
    removeEventListener("online", this.#wake);
    removeEventListener("offline", this.#wentOffline);
    document.removeEventListener("visibilitychange", this.#wake);
    this.#setStatus("closed");
  }

  #emit(type, value) {
    for (const fn of this.#listeners.get(type) ?? []) {
      // One broken listener must not stop the others or the stream.
      try { fn(value); } catch (err) { console.error("livepush listener failed", err); }
    }
  }

  #setStatus(status) {
    this.#status = status;
    if (this.#reported === `${status}/${this.#transport}`) return;
    this.#reported = `${status}/${this.#transport}`;
    this.#emit("status", { status, transport: this.#transport });
  }

  async #connect() {
    this.#timer = null;
    if (this.#closed || this.#conn || this.#connecting) return;
    this.#connecting = true;
    const ready = (await this.#readyToken()) && (!this.#needsSnapshot || (await this.#reloadSnapshot()));
    this.#connecting = false;
    if (!ready) return this.#retryLater();
    if (this.#closed || this.#conn || this.#timer) return;
    if (this.#transport === "ws") this.#openWebSocket();
    else this.#openEventSource();
  }

  // Close the current connection without reconnecting: its close/error handlers see
  // that it is no longer `#conn` and stay quiet.
  #drop() {
    const conn = this.#conn;
    this.#conn = null;
    conn?.close();
  }

  // The connection ended or failed: try again after a backoff with full jitter (a
  // random delay in [0, cap]) so that thousands of readers cut off by one server
  // restart do not all come back in the same millisecond.
  #retryLater() {
    if (this.#closed || this.#timer) return;
    const cap = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.#attempt);
    this.#attempt += 1;
    this.#setStatus(navigator.onLine === false ? "offline" : "reconnecting");
    this.#timer = setTimeout(() => this.#connect(), Math.random() * cap);
  }

  // Reconnect now rather than at the end of the backoff: the tab came back to the
  // foreground or the network returned, and a reader is looking. A connection that looks
  // live may be dead after a sleep or a network change, so it must prove itself (a
  // WebSocket ping; an EventSource cannot be probed, so it is reopened when back online).
  #wake = (e) => {
    if (this.#closed || document.visibilityState === "hidden") return;
    if (this.#timer) {
      this.#restartNow();
    } else if (this.#conn?.kind === "sse" && e.type === "online") {
      this.#restartNow();
    } else {
      this.#conn?.probe();
    }
  };

  #wentOffline = () => {
    if (!this.#closed) this.#setStatus("offline");
  };

  #live() {
    this.#attempt = 0;
    this.#setStatus("live");
  }

  #restartNow() {
    this.#drop();
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#connect();
  }

  #subscribeMessage() {
    const msg = { type: "subscribe", feed: this.feed };
    if (this.#lastSeq !== null) msg.since = this.#lastSeq;
    if (this.#epoch !== null) msg.epoch = this.#epoch;
    if (this.#options.receipts) msg.receipts = true; // for editors: a publisher token
    if (this.#token) msg.token = this.#token;
    return msg;
  }

  // The token for the next connection: options.token's string, or what its function
  // returns when there is none yet, when it was asked to renew, or when the JWT in hand
  // expires within TOKEN_MARGIN_MS. False when the function failed (retry later).
  async #readyToken() {
    const source = this.#options.token;
    if (typeof source !== "function") return true;
    if (this.#token !== null && !this.#renewToken && !expiresSoon(this.#token)) return true;
    try {
      const token = await source();
      if (typeof token !== "string" || !token) return false;
      this.#token = token;
      this.#renewToken = false;
      return true;
    } catch (err) {
      console.error("livepush token function failed", err);
      return false;
    }
  }

  // The token ran out (`unsubscribed`, token_expired) or was refused: renew it and
  // subscribe again from the last seq and epoch. A token that keeps being refused
  // (a string cannot be renewed; a function that returns refused ones) is given up.
  #tokenRefused(expired) {
    if (!expired) this.#refusals += 1;
    const renewable = typeof this.#options.token === "function";
    if (this.#refusals > (renewable ? 1 : 0)) {
      this.#drop();
      clearTimeout(this.#timer);
      this.#timer = null;
      this.#setStatus("denied");
      return;
    }
    this.#renewToken = renewable;
    this.#restartNow();
  }

  #openWebSocket() {
    const url = new URL("v1/ws", this.#base);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    // A reader's subscription rides in the URL (the SPEC's ?feed=&since=&epoch=): the
    // server answers the upgrade and `subscribed` in one write, a round trip sooner
    // than a message after the open. A token (receipts, a private feed) stays out of URLs.
    const inUrl = !this.#options.receipts && !this.#token;
    if (inUrl) {
      url.searchParams.set("feed", this.feed);
      if (this.#lastSeq !== null) url.searchParams.set("since", this.#lastSeq);
      if (this.#epoch !== null) url.searchParams.set("epoch", this.#epoch);
    }
    const ws = new WebSocket(url);
    let opened = false;
    let pongTimer = null;
    // A proxy may swallow the upgrade and hang instead of refusing it.
    const openTimer = setTimeout(() => ws.close(), CONNECT_TIMEOUT_MS);
    const conn = {
      kind: "ws",
      close: () => ws.close(1000),
      probe: () => {
        if (!opened || pongTimer) return;
        ws.send(JSON.stringify({ type: "ping" }));
        pongTimer = setTimeout(() => { if (this.#conn === conn) this.#restartNow(); }, PONG_TIMEOUT_MS);
      },
      pong: () => {
        clearTimeout(pongTimer);
        pongTimer = null;
        this.#live();
      },
    };
    this.#conn = conn;
    ws.onopen = () => {
      opened = true;
      clearTimeout(openTimer);
      this.#wsOpenedOnce = true;
      this.#wsFailedBeforeOpen = 0;
      if (!inUrl) ws.send(JSON.stringify(this.#subscribeMessage()));
    };
    ws.onmessage = (e) => { if (this.#conn === conn) this.#receive(JSON.parse(e.data)); };
    ws.onclose = () => {
      clearTimeout(openTimer);
      clearTimeout(pongTimer);
      if (this.#conn !== conn) return;
      this.#conn = null;
      if (!opened) this.#wsFailedBeforeOpen += 1;
      // Only a WebSocket that has never opened here counts as blocked: once one has
      // worked, failures mean the server is down or restarting, and SSE would not help.
      if (this.#fallback && !this.#wsOpenedOnce && this.#wsFailedBeforeOpen >= BLOCKED_AFTER) {
        this.#transport = "sse";
        this.#fallback = false; // cost: stays on SSE until the page reloads
        this.#setStatus(this.#status);
        this.#connect();
      } else {
        this.#retryLater();
      }
    };
  }

  // The browser's own EventSource retry is not used: it waits a fixed ~3 s with no
  // jitter and resumes by Last-Event-ID, which cannot follow a reset. Every error closes
  // it and the common backoff reopens it with ?since and &epoch.
  #openEventSource() {
    const url = new URL(`v1/feeds/${encodeURIComponent(this.feed)}/events`, this.#base);
    if (this.#lastSeq !== null) url.searchParams.set("since", this.#lastSeq);
    if (this.#epoch !== null) url.searchParams.set("epoch", this.#epoch);
    if (this.#token) url.searchParams.set("token", this.#token); // EventSource sends no headers
    const source = new EventSource(url);
    const conn = { kind: "sse", close: () => source.close(), probe: () => {} };
    this.#conn = conn;
    source.onopen = () => { if (this.#conn === conn) this.#live(); };
    const onMessage = (e) => {
      if (this.#conn !== conn) return;
      const epoch = e.lastEventId ? e.lastEventId.slice(0, e.lastEventId.lastIndexOf(":")) : "";
      if (epoch) this.#epoch = epoch;
      this.#receive(JSON.parse(e.data));
    };
    for (const type of SSE_TYPES) source.addEventListener(type, onMessage);
    source.onerror = () => {
      source.close();
      if (this.#conn !== conn) return;
      this.#conn = null;
      this.#retryLater();
    };
  }

  #receive(msg) {
    if (msg.feed !== undefined && msg.feed !== this.feed) return;
    switch (msg.type) {
      case "subscribed":
        if (this.#lastSeq === null) this.#lastSeq = msg.head_seq;
        this.#epoch = msg.epoch;
        this.#refusals = 0;
        this.#live();
        this.#emit("subscribed", msg);
        return;
      case "entry.created":
      case "entry.updated":
      case "entry.deleted":
      case "feed.updated":
      case "entry.purged":
        if (this.#lastSeq !== null && msg.seq <= this.#lastSeq) return; // replayed twice
        if (this.#lastSeq !== null && msg.seq > this.#lastSeq + 1) {
          // Never deliver past a hole: resume from the last seq and let the server
          // replay the missing events (or answer reset).
          this.#drop();
          this.#retryLater();
          return;
        }
        this.#lastSeq = msg.seq;
        this.#emit(EVENT_NAMES[msg.type], msg);
        return;
      case "reset":
        this.#needsSnapshot = true;
        this.#restartNow();
        return;
      case "pong":
        this.#conn?.pong?.();
        return;
      case "receipt":
        this.#emit("receipt", msg);
        return;
      case "unsubscribed":
        this.#emit("unsubscribed", msg);
        if (msg.reason === "token_expired") this.#tokenRefused(true);
        return;
      case "error":
        this.#emit("error", msg);
        if (msg.feed === this.feed && (msg.code === "unauthorized" || msg.code === "forbidden")) {
          this.#tokenRefused(false);
        }
        return;
    }
  }

  // After a reset the page's view is from another history: replace it whole with the
  // snapshot, then resume from the snapshot's head_seq and epoch, which continue it exactly.
  async #reloadSnapshot() {
    const url = new URL(`v1/feeds/${encodeURIComponent(this.feed)}/snapshot`, this.#base);
    url.searchParams.set("limit", this.#options.snapshotLimit ?? 50);
    let snapshot;
    try {
      const headers = { Accept: "application/json" };
      if (this.#token) headers.Authorization = `Bearer ${this.#token}`;
      const response = await fetch(url, { headers });
      if (response.status === 401) this.#renewToken = typeof this.#options.token === "function";
      if (!response.ok) return false;
      snapshot = await response.json();
    } catch {
      return false;
    }
    if (this.#closed) return false;
    this.#needsSnapshot = false;
    this.#lastSeq = snapshot.head_seq;
    this.#epoch = snapshot.epoch;
    this.#emit("reset", snapshot);
    return true;
  }
}

// Whether a JWT's `exp` (read, not verified: only the server can) is within the margin.
// Any other token (a publisher's, an opaque one) never expires here.
function expiresSoon(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const { exp } = JSON.parse(atob(payload));
    return typeof exp === "number" && exp * 1000 - Date.now() < TOKEN_MARGIN_MS;
  } catch {
    return false;
  }
}

function chooseTransport(requested = "auto") {
  if (requested !== "auto") return requested;
  const fromPage = typeof location === "undefined" ? null : new URLSearchParams(location.search).get("transport");
  return fromPage === "ws" || fromPage === "sse" ? fromPage : "auto";
}
