// editor.js — the editor console: publish, correct and retract entries, and watch each
// event propagate.
//
// Propagation comes from an extension to the SPEC: subscribing with "receipts": true
// makes the server send {"type":"receipt","seq","delivered","nodes","fanout_ms"}, each
// carrying the running total over all nodes so far, so only the latest per seq is kept.
// Entry data is untrusted and reaches the page through textContent only.

const TOKEN_KEY = "livepush.token";
const FEED_KEY = "livepush.feed";
const CONFIRM_MS = 4000;
const count = new Intl.NumberFormat();
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
const KIND = { created: "Published", updated: "Corrected", deleted: "Retracted" };

export function startEditor(root, subscribe) {
  const settings = root.querySelector(".ed-settings");
  const publishForm = root.querySelector(".ed-publish");
  const notice = publishForm.querySelector(".ed-notice");
  const list = root.querySelector(".ed-list");
  const status = root.querySelector(".ed-status");
  const info = root.querySelector(".ed-feed-info");
  const { token: tokenInput, feed: feedInput } = settings.elements;
  const publishButton = publishForm.querySelector("button[type=submit]");

  let feed = null; // the livepush subscription
  let feedName = "";
  const entries = new Map(); // id -> current revision
  const retracted = new Set();
  const events = new Map(); // id -> [{seq, kind}] seen by this console, oldest first
  const receipts = new Map(); // seq -> latest receipt
  const owners = new Map(); // seq -> entry id
  let idempotencyKey = crypto.randomUUID();

  tokenInput.value = localStorage.getItem(TOKEN_KEY) ?? "";
  feedInput.value = localStorage.getItem(FEED_KEY) ?? "demo";
  tokenInput.addEventListener("change", () => localStorage.setItem(TOKEN_KEY, tokenInput.value.trim()));
  settings.addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem(TOKEN_KEY, tokenInput.value.trim());
    localStorage.setItem(FEED_KEY, feedInput.value);
    open(feedInput.value);
  });

  async function api(method, path, body, extraHeaders = {}) {
    const headers = { Accept: "application/json", ...extraHeaders };
    const token = tokenInput.value.trim();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  const feedPath = (rest = "") => `/v1/feeds/${encodeURIComponent(feedName)}${rest}`;

  async function open(name) {
    feed?.close();
    feedName = name;
    for (const map of [entries, events, receipts, owners]) map.clear();
    retracted.clear();
    info.textContent = "Loading…";
    try {
      const snapshot = await api("GET", feedPath("/snapshot?limit=100"));
      load(snapshot);
      feed = subscribe(name, {
        since: snapshot.head_seq,
        epoch: snapshot.epoch,
        receipts: true,
        token: tokenInput.value.trim(),
        snapshotLimit: 100, // after a reset, reload as much as was first shown
      });
    } catch (err) {
      info.textContent = `Could not open the feed: ${err.message}`;
      return;
    }
    feed.on("status", showStatus);
    feed.on("subscribed", refreshInfo); // the count now includes this console
    feed.on("created", ({ seq, entry }) => record(entry.id, seq, "created", entry));
    feed.on("updated", ({ seq, entry }) => record(entry.id, seq, "updated", entry));
    feed.on("deleted", ({ seq, id }) => record(id, seq, "deleted"));
    feed.on("reset", load);
    feed.on("receipt", (receipt) => {
      receipts.set(receipt.seq, receipt);
      if (owners.has(receipt.seq)) render(owners.get(receipt.seq));
    });
  }

  function load(snapshot) {
    entries.clear();
    retracted.clear();
    for (const entry of snapshot.entries) entries.set(entry.id, entry);
    info.textContent = `Feed “${feedName}”, epoch ${snapshot.epoch}, ${snapshot.head_seq} events.`;
    renderAll();
  }

  async function refreshInfo() {
    try {
      const about = await api("GET", feedPath());
      const people = about.subscribers === 1 ? "subscriber" : "subscribers";
      info.textContent = `Feed “${about.feed}”, epoch ${about.epoch}, ${about.head_seq} events, ${count.format(about.subscribers)} ${people} now.`;
    } catch { /* the snapshot line stays */ }
  }

  // An event of an entry, from the socket or from our own request's answer (whichever
  // comes first; the second is a no-op).
  function record(id, seq, kind, entry) {
    if (owners.has(seq)) return;
    owners.set(seq, id);
    if (!events.has(id)) events.set(id, []);
    events.get(id).push({ seq, kind });
    if (entry) entries.set(id, entry);
    if (kind === "deleted") retracted.add(id);
    render(id);
  }

  function showStatus({ status: state, transport }) {
    status.dataset.status = state;
    status.dataset.transport = transport;
    const via = transport === "ws" ? "WebSocket" : "SSE (no receipts)";
    const text = state === "live" ? `Live · ${via}` : state[0].toUpperCase() + state.slice(1);
    status.querySelector(".ed-status-text").textContent = text;
  }

  publishForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = publishForm.elements;
    const body = { body: form.body.value, pinned: form.pinned.checked };
    if (form.title.value.trim()) body.title = form.title.value.trim();
    if (form.author.value.trim()) body.author = form.author.value.trim();
    publishButton.disabled = true;
    try {
      // The same key on a retry after a network error: the server publishes once.
      const entry = await api("POST", feedPath("/entries"), body, { "Idempotency-Key": idempotencyKey });
      idempotencyKey = crypto.randomUUID();
      record(entry.id, entry.seq, "created", entry);
      publishForm.reset();
      say(`Published #${entry.seq}.`, false);
    } catch (err) {
      say(err.message, true);
    } finally {
      publishButton.disabled = false;
    }
  });

  function say(text, isError) {
    notice.hidden = false;
    notice.textContent = text;
    notice.classList.toggle("is-error", isError);
  }

  function renderAll() {
    list.replaceChildren();
    for (const id of entries.keys()) render(id);
  }

  // (Re)draw one entry's row, keeping rows newest first.
  function render(id) {
    const entry = entries.get(id);
    const old = list.querySelector(`li[data-id="${CSS.escape(id)}"]`);
    if (!entry) return old?.remove();
    const row = entryRow(entry);
    // A correction being typed survives redraws (a receipt, another editor's change).
    const editing = old?.querySelector(".ed-correction");
    if (editing && !retracted.has(id)) {
      row.append(editing);
      row.querySelector(".ed-actions").hidden = true;
    }
    if (old) {
      old.replaceWith(row);
    } else {
      const next = [...list.children].find((li) => Number(li.dataset.seq) < entry.seq);
      list.insertBefore(row, next ?? null);
    }
    root.querySelector(".ed-empty").hidden = list.children.length > 0;
    root.querySelector(".ed-count").textContent = `(${entries.size - retracted.size})`;
  }

  function entryRow(entry) {
    const row = el("li", "ed-entry");
    row.dataset.id = entry.id;
    row.dataset.seq = entry.seq;
    const gone = retracted.has(entry.id);
    row.classList.toggle("is-retracted", gone);
    const head = el("div", "ed-entry-head");
    head.append(el("span", "ed-time", clockOf(entry.published_at)), el("span", "ed-seq", `#${entry.seq}`));
    if (entry.pinned) head.append(el("span", "ed-tag is-pinned", "Pinned"));
    if (entry.updated_at && entry.updated_at !== entry.published_at) head.append(el("span", "ed-tag", "Corrected"));
    if (gone) head.append(el("span", "ed-tag is-gone", "Retracted"));
    row.append(head);
    if (entry.title) row.append(el("strong", "ed-title", entry.title));
    row.append(el("p", "ed-body", entry.body));
    if (entry.author) row.append(el("p", "ed-author", `By ${entry.author}`));
    for (const { seq, kind } of events.get(entry.id) ?? []) {
      const line = el("p", "ed-propagation", `${KIND[kind]} #${seq}: ${describe(receipts.get(seq))}`);
      line.dataset.seq = seq;
      row.append(line);
    }
    if (!gone) row.append(actions(entry, row));
    return row;
  }

  function actions(entry, row) {
    const bar = el("div", "ed-actions");
    const correct = el("button", "ed-correct", "Correct");
    const retract = el("button", "ed-retract", "Retract");
    correct.type = retract.type = "button";
    correct.addEventListener("click", () => row.append(correctionForm(entry, row)), { once: true });
    // Two clicks instead of confirm(): a modal would block the page, events included.
    let armed = null;
    retract.addEventListener("click", async () => {
      if (!armed) {
        retract.textContent = "Really retract?";
        armed = setTimeout(() => { armed = null; retract.textContent = "Retract"; }, CONFIRM_MS);
        return;
      }
      clearTimeout(armed);
      retract.disabled = true;
      try {
        await api("DELETE", feedPath(`/entries/${encodeURIComponent(entry.id)}`));
      } catch (err) {
        say(err.message, true);
        retract.disabled = false;
      }
    });
    bar.append(correct, retract);
    return bar;
  }

  function correctionForm(entry, row) {
    const form = el("form", "ed-correction");
    // Constant markup only; the entry's values go in through properties below.
    form.innerHTML = `<label class="ed-field">Title <input name="title" maxlength="300"></label>
      <label class="ed-field">Body <textarea name="body" rows="5" required></textarea></label>
      <label class="ed-check"><input name="pinned" type="checkbox"> Pinned</label>
      <div class="ed-actions"><button class="ed-primary">Save correction</button><button type="button" name="cancel">Cancel</button></div>`;
    const { title, body, pinned, cancel } = form.elements;
    title.value = entry.title ?? "";
    body.value = entry.body;
    pinned.checked = Boolean(entry.pinned);
    const done = () => {
      form.remove();
      render(entry.id);
    };
    cancel.addEventListener("click", done);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      // Send only what changed: a PATCH of untouched fields would still be an event.
      const change = {};
      if (title.value !== (entry.title ?? "")) change.title = title.value;
      if (body.value !== entry.body) change.body = body.value;
      if (pinned.checked !== Boolean(entry.pinned)) change.pinned = pinned.checked;
      if (!Object.keys(change).length) return done();
      try {
        const updated = await api("PATCH", feedPath(`/entries/${encodeURIComponent(entry.id)}`), change);
        entries.set(updated.id, updated);
        done();
      } catch (err) {
        say(err.message, true);
      }
    });
    row.querySelector(".ed-actions").hidden = true;
    return form;
  }
}

function describe(receipt) {
  if (!receipt) return "propagating…";
  const subscribers = receipt.delivered === 1 ? "subscriber" : "subscribers";
  const nodes = receipt.nodes === 1 ? "node" : "nodes";
  return `reached ${count.format(receipt.delivered)} ${subscribers} on ${count.format(receipt.nodes)} ${nodes}, fan-out ${Number(receipt.fanout_ms).toFixed(1)} ms`;
}

function clockOf(iso) {
  const moment = new Date(iso);
  return Number.isNaN(moment.getTime()) ? "" : clock.format(moment);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

class ApiError extends Error {
  constructor(status, data) {
    const error = data?.error;
    const fields = error?.fields ? Object.entries(error.fields).map(([k, v]) => `${k}: ${v}`).join("; ") : "";
    const base = status === 401 || status === 403 ? "The publisher token was refused" : error?.message ?? `HTTP ${status}`;
    super(fields ? `${base} (${fields})` : base);
    this.status = status;
  }
}
