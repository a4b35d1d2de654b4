// reader.js — the live blog page: applies a feed's events to the server-rendered entries.
//
// Entry data is untrusted (bodies may hold HTML "as given"): it only ever reaches the
// page through textContent and attributes, never innerHTML. The markup built by
// entryElement() must match render_entry() in livepush/pages.py.

const OLDER_PAGE = 20;
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
const fullDate = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "long" });
// Dates in the page's language ("November 14, 2024"), in the reader's time zone.
const dayFormat = new Intl.DateTimeFormat(document.documentElement.lang || "en", { dateStyle: "long" });
// What the page says about coverage that is not live; pages.py has the same words.
const BANNERS = { paused: "We have paused our live coverage", ended: "Coverage has ended" };
const STATUS_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline, waiting for the network",
  closed: "Disconnected",
  denied: "This feed needs a valid reader token",
};
// How long the page waits for the embedding site to answer a token request.
const TOKEN_WAIT_MS = 10_000;
const TRANSPORT_TEXT = { ws: "WebSocket", sse: "SSE" };

export function startReader(main, subscribe) {
  const feedName = main.dataset.feed;
  const list = main.querySelector(".lp-entries");
  const empty = main.querySelector(".lp-empty");
  const status = main.querySelector(".lp-status");
  const newBar = main.querySelector(".lp-new-bar");
  const olderButton = main.querySelector(".lp-load-older");
  const headline = main.querySelector(".lp-headline");
  const standfirst = main.querySelector(".lp-standfirst");
  const banner = main.querySelector(".lp-banner");
  const pending = new Set(); // entries that arrived while the reader was scrolled down
  // Seq of the oldest unpinned entry loaded; 0 when nothing older can exist.
  let oldestLoaded = Number(main.dataset.before) || 0;

  for (const time of list.querySelectorAll("time[datetime]")) localizeTime(time);
  for (const day of list.querySelectorAll(".lp-day")) localizeDay(day);
  olderButton.hidden = oldestLoaded <= 1;

  // A private feed's page was opened with a reader token (?token= or Bearer), which
  // the server handed back on <main>. The page keeps it out of the address bar (and so
  // out of bookmarks and shared links) and uses it for its subscription and reads;
  // when it runs out, the embedding site is asked for a fresh one (hostToken).
  const host = main.dataset.token ? hostToken(feedName, main.dataset.token) : null;
  if (host) forgetTokenInUrl();

  // Resume exactly where the server-rendered snapshot ends.
  const headSeq = Number.parseInt(main.dataset.headSeq, 10);
  const feed = subscribe(feedName, {
    since: Number.isInteger(headSeq) ? headSeq : undefined,
    epoch: main.dataset.epoch || undefined,
    token: host?.token,
  });

  feed.on("status", ({ status: state, transport }) => {
    status.hidden = false;
    status.dataset.status = state;
    status.dataset.transport = transport;
    status.querySelector(".lp-status-text").textContent =
      state === "live" ? `Live · ${TRANSPORT_TEXT[transport]}` : STATUS_TEXT[state] ?? state;
  });
  // Each applied event is also announced on <main> as a "livepush:event" DOM event, for
  // the host page (analytics, a sound) and for tests that count what the page received.
  const announce = (event) => main.dispatchEvent(new CustomEvent("livepush:event", { detail: event }));
  feed.on("created", (event) => { place(event.entry, true); announce(event); });
  feed.on("updated", (event) => { place(event.entry, false); announce(event); });
  feed.on("deleted", (event) => { remove(event.id); announce(event); });
  // A purged entry's events, replayed from history: nothing of it is shown.
  feed.on("purged", (event) => { remove(event.id); announce(event); });
  feed.on("meta", (event) => { applyMeta(event.meta); announce(event); });
  feed.on("reset", (snapshot) => {
    // History was lost or we were gone too long: the snapshot replaces everything.
    main.dataset.epoch = snapshot.epoch;
    applyMeta(snapshot);
    pending.clear();
    list.replaceChildren(...sorted(snapshot.entries).map(entryElement));
    // Same rule as pages.py: a snapshot shorter than its limit (50) holds everything.
    oldestLoaded = snapshot.entries.length >= 50 ? oldestUnpinned(snapshot.entries) : 0;
    olderButton.hidden = oldestLoaded <= 1;
    refresh();
    announce({ type: "reset", feed: snapshot.feed, epoch: snapshot.epoch, head_seq: snapshot.head_seq });
  });

  // The feed's headline, standfirst and coverage status (a feed.updated event's `meta`,
  // or a snapshot, which carries the same fields).
  function applyMeta(meta) {
    const title = meta.title || feedName;
    headline.textContent = title;
    document.title = `Live: ${title}`;
    standfirst.textContent = meta.description ?? "";
    standfirst.hidden = !meta.description;
    main.dataset.feedStatus = meta.status ?? "live";
    banner.textContent = BANNERS[meta.status] ?? "";
    banner.hidden = !banner.textContent;
  }

  function findEntry(id) {
    return list.querySelector(`article[data-id="${CSS.escape(id)}"]`);
  }

  // Put an entry (new or corrected) at its place: pinned first, then newest first.
  function place(entry, isNew) {
    const old = findEntry(entry.id);
    const inView = entry.pinned || oldestLoaded === 0 || entry.seq >= oldestLoaded;
    if (!old && !isNew && !inView) return; // a correction to an entry not loaded yet
    const element = entryElement(entry);
    if (old) {
      element.hidden = old.hidden;
      old.replaceWith(element);
      if (pending.delete(old)) pending.add(element);
    }
    if (!inView) {
      element.remove(); // unpinned and older than what is loaded: "Load older" brings it
    } else if (old) {
      insertSorted(element); // pinning may have moved it
    } else if (readerScrolledDown()) {
      // Inserting above the reader would shift the text they are reading: hold it back.
      element.hidden = true;
      pending.add(element);
      insertSorted(element);
    } else {
      element.classList.add("is-fresh");
      insertSorted(element);
    }
    refresh();
  }

  function remove(id) {
    const element = findEntry(id);
    if (!element) return;
    pending.delete(element);
    element.remove();
    refresh();
  }

  function insertSorted(element) {
    const key = sortKey(element.dataset);
    for (const other of list.children) {
      if (other !== element && compareKeys(key, sortKey(other.dataset)) < 0) {
        list.insertBefore(element, other);
        return;
      }
    }
    list.append(element);
  }

  function refresh() {
    markDays(list);
    empty.hidden = list.querySelector("article:not([hidden])") !== null;
    newBar.hidden = pending.size === 0;
    newBar.textContent = pending.size === 1 ? "1 new entry" : `${pending.size} new entries`;
  }

  function reveal() {
    for (const element of pending) {
      element.hidden = false;
      element.classList.add("is-fresh");
    }
    pending.clear();
    refresh();
  }

  function readerScrolledDown() {
    return list.getBoundingClientRect().top < 0;
  }

  newBar.addEventListener("click", () => {
    reveal();
    main.scrollIntoView({ behavior: "smooth", block: "start" });
  });
  addEventListener("scroll", () => { if (pending.size && !readerScrolledDown()) reveal(); }, { passive: true });

  olderButton.addEventListener("click", async () => {
    olderButton.disabled = true;
    olderButton.textContent = "Loading…";
    try {
      const url = `/v1/feeds/${encodeURIComponent(feedName)}/snapshot?before=${oldestLoaded}&limit=${OLDER_PAGE}`;
      const headers = { Accept: "application/json" };
      if (host) headers.Authorization = `Bearer ${host.current()}`;
      const response = await fetch(url, { headers });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const page = await response.json();
      // The page may repeat pinned entries (the snapshot always holds them): skip those.
      const older = page.entries.filter((e) => !e.pinned && e.seq < oldestLoaded && !findEntry(e.id));
      for (const entry of sorted(older)) list.append(entryElement(entry));
      oldestLoaded = older.length ? oldestUnpinned(older) : oldestLoaded;
      // A short page is the end (and so is an empty one, should the server count pinned
      // entries in the limit); seq 1 has nothing before it.
      olderButton.hidden = page.entries.length < OLDER_PAGE || !older.length || oldestLoaded <= 1;
      olderButton.textContent = "Load older entries";
    } catch {
      olderButton.textContent = "Could not load older entries. Try again";
    }
    olderButton.disabled = false;
    refresh();
  });

  refresh();
  return feed;
}

// The reader token of a private feed's page, renewed by the site that embeds the page:
// livepush.js calls token() first for the token the page came with, then each time it
// runs out, when the page posts {type: "livepush:token-needed", feed} to its parent and
// takes the first {type: "livepush:token", token} the parent posts back (the parent may
// also post one at any time). A page that is not framed, or whose parent does not
// answer, keeps the token it has: the server's refusal then ends the subscription.
export function hostToken(feed, initial) {
  let current = initial;
  let first = true;
  let waiting = null; // resolves a pending request with the next token the parent posts
  addEventListener("message", (e) => {
    if (e.source !== window.parent || e.data?.type !== "livepush:token") return;
    if (typeof e.data.token !== "string" || !e.data.token) return;
    current = e.data.token;
    waiting?.(current);
  });
  const ask = () =>
    new Promise((resolve) => {
      const timer = setTimeout(() => resolve(current), TOKEN_WAIT_MS);
      waiting = (token) => {
        clearTimeout(timer);
        waiting = null;
        resolve(token);
      };
      window.parent.postMessage({ type: "livepush:token-needed", feed }, "*");
    });
  return {
    current: () => current,
    token: async () => {
      if (first || window.parent === window) {
        first = false;
        return current;
      }
      return ask();
    },
  };
}

function forgetTokenInUrl() {
  const url = new URL(location.href);
  if (!url.searchParams.has("token")) return;
  url.searchParams.delete("token");
  history.replaceState(history.state, "", url);
}

// Show the date where a day starts, on a blog whose entries span more than one day:
// on every pinned entry, and on the first of each day's entries (newest first, so each
// day's entries come under its date). Same rule as day_starts() in pages.py, in the
// reader's time zone.
function markDays(list) {
  const shown = [...list.querySelectorAll("article:not([hidden])")];
  const days = shown.map((article) => article.querySelector(".lp-day")?.textContent ?? "");
  const multiDay = new Set(days).size > 1;
  let previous = null;
  shown.forEach((article, i) => {
    let start = false;
    if (multiDay && article.dataset.pinned === "true") {
      start = true;
    } else if (multiDay) {
      start = days[i] !== previous;
      previous = days[i];
    }
    article.classList.toggle("is-day-start", start);
  });
}

// One entry as an <article>; the same markup as render_entry() in pages.py.
export function entryElement(entry) {
  const article = element("article", entry.pinned ? "lp-entry is-pinned" : "lp-entry");
  article.id = `entry-${entry.id}`;
  article.dataset.id = entry.id;
  article.dataset.seq = entry.seq;
  article.dataset.pinned = String(Boolean(entry.pinned));
  article.append(dayElement(entry.published_at));
  const meta = element("header", "lp-entry-meta");
  if (entry.pinned) meta.append(element("span", "lp-pin", "Pinned"));
  meta.append(timeElement(entry.published_at, "lp-time"));
  if (entry.updated_at && entry.updated_at !== entry.published_at) {
    const updated = element("span", "lp-updated", "Updated ");
    updated.append(timeElement(entry.updated_at));
    meta.append(updated);
  }
  if (entry.author) meta.append(element("span", "lp-author", entry.author));
  article.append(meta);
  if (entry.title) article.append(element("h2", "lp-title", entry.title));
  const body = element("div", "lp-body");
  for (const text of paragraphs(entry.body ?? "")) body.append(element("p", null, text));
  article.append(body);
  return article;
}

// Paragraphs split on blank lines; single newlines stay (white-space: pre-line).
function paragraphs(body) {
  const text = body.replace(/\r\n?/g, "\n").trim();
  return text ? text.split(/\n\s*\n/).map((p) => p.trim()) : [];
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function timeElement(iso, className) {
  const time = element("time", className);
  time.dateTime = iso ?? "";
  localizeTime(time);
  return time;
}

function dayElement(iso) {
  const moment = new Date(iso);
  return element("p", "lp-day", Number.isNaN(moment.getTime()) ? "" : dayFormat.format(moment));
}

// The server renders dates in UTC; the reader wants their own.
function localizeDay(day) {
  const time = day.parentElement.querySelector("time.lp-time");
  const moment = new Date(time?.dateTime);
  if (!Number.isNaN(moment.getTime())) day.textContent = dayFormat.format(moment);
}

// The server renders times in UTC; the reader wants their own clock.
function localizeTime(time) {
  const moment = new Date(time.dateTime);
  if (Number.isNaN(moment.getTime())) return;
  time.textContent = clock.format(moment);
  time.title = fullDate.format(moment);
}

function sortKey({ pinned, seq }) {
  return [pinned === "true" || pinned === true ? 0 : 1, -Number(seq)];
}

function compareKeys([pinA, seqA], [pinB, seqB]) {
  return pinA - pinB || seqA - seqB;
}

function sorted(entries) {
  return [...entries].sort((a, b) => compareKeys(sortKey(a), sortKey(b)));
}

function oldestUnpinned(entries) {
  const seqs = entries.filter((e) => !e.pinned).map((e) => e.seq);
  return seqs.length ? Math.min(...seqs) : 0;
}
