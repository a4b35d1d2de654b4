// editor.js — the editor console: publish, schedule, correct and retract entries, set
// the feed's headline, standfirst and status, read an entry's revisions, and watch each
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
const KIND = { created: "Published", updated: "Corrected", deleted: "Retracted", purged: "Purged" };
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium", hourCycle: "h23" });
// How often the scheduled list is read again (another editor may have scheduled one).
const SCHEDULED_REFRESH_MS = 15_000;
const FIELD_NAMES = { title: "Title", body: "Body", author: "Author", tags: "Tags", pinned: "Pinned", meta: "Meta" };

export function startEditor(root, subscribe) {
  const settings = root.querySelector(".ed-settings");
  const publishForm = root.querySelector(".ed-publish");
  const notice = publishForm.querySelector(".ed-notice");
  const list = root.querySelector(".ed-list");
  const status = root.querySelector(".ed-status");
  const info = root.querySelector(".ed-feed-info");
  const { token: tokenInput, feed: feedInput } = settings.elements;
  const publishButton = publishForm.querySelector("button[type=submit]");
  const coverage = root.querySelector(".ed-coverage");
  const coverageInfo = coverage.querySelector(".ed-coverage-info");
  const scheduledList = root.querySelector(".ed-scheduled-list");

  let feed = null; // the livepush subscription
  let feedName = "";
  const entries = new Map(); // id -> current revision
  const retracted = new Set();
  const events = new Map(); // id -> [{seq, kind}] seen by this console, oldest first
  const receipts = new Map(); // seq -> latest receipt
  const owners = new Map(); // seq -> entry id
  const scheduled = new Map(); // id -> scheduled record (GET .../scheduled)
  let idempotencyKey = crypto.randomUUID();
  let coverageDirty = false; // the editor is changing the coverage form: leave it be

  // One timer for every countdown; the list itself is read again now and then.
  setInterval(tickCountdowns, 1000);
  setInterval(() => { if (feedName) loadScheduled(); }, SCHEDULED_REFRESH_MS);

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
    for (const map of [entries, events, receipts, owners, scheduled]) map.clear();
    retracted.clear();
    renderScheduled();
    info.textContent = "Loading…";
    try {
      const snapshot = await api("GET", feedPath("/snapshot?limit=100"));
      load(snapshot);
      loadScheduled();
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
    feed.on("deleted", ({ seq, id, purged }) => record(id, seq, purged ? "purged" : "deleted"));
    feed.on("purged", ({ seq, id }) => record(id, seq, "purged"));
    feed.on("meta", ({ seq, meta }) => showCoverage(meta, seq));
    feed.on("reset", load);
    feed.on("receipt", (receipt) => {
      receipts.set(receipt.seq, receipt);
      if (owners.has(receipt.seq)) render(owners.get(receipt.seq));
    });
  }

  function load(snapshot) {
    entries.clear();
    retracted.clear();
    coverageDirty = false;
    showCoverage(snapshot);
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
    if (kind === "deleted" || kind === "purged") retracted.add(id);
    if (kind === "created" && scheduled.delete(id)) renderScheduled(); // released
    render(id);
  }

  // Coverage: the feed's headline, standfirst and status (SPEC "Stories").
  function showCoverage(meta, seq) {
    const form = coverage.elements;
    if (!coverageDirty) {
      form.title.value = meta.title ?? "";
      form.description.value = meta.description ?? "";
      form.status.value = meta.status ?? "live";
    }
    const since = meta.status === "ended" && meta.ended_at ? ` at ${dateTime.format(new Date(meta.ended_at))}` : "";
    coverageInfo.textContent = `${statusWord(meta.status)}${since}${seq ? ` · updated #${seq}` : ""}.`;
  }

  coverage.addEventListener("input", () => { coverageDirty = true; });
  coverage.addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = coverage.elements;
    const change = {
      title: form.title.value.trim() || null,
      description: form.description.value.trim() || null,
      status: form.status.value,
    };
    try {
      const about = await api("PATCH", feedPath(), change);
      coverageDirty = false;
      showCoverage(about, about.head_seq);
    } catch (err) {
      coverageInfo.textContent = err.message;
    }
  });

  // Scheduled entries: held by the server until their time, then published as new ones.
  async function loadScheduled() {
    const name = feedName;
    try {
      const list = await api("GET", feedPath("/scheduled"));
      if (name !== feedName) return;
      scheduled.clear();
      for (const item of list.scheduled) scheduled.set(item.id, item);
      renderScheduled();
    } catch { /* the list stays as it was; the next refresh tries again */ }
  }

  function renderScheduled() {
    const items = [...scheduled.values()].sort((a, b) => Date.parse(a.publish_at) - Date.parse(b.publish_at));
    scheduledList.replaceChildren(...items.map(scheduledRow));
    root.querySelector(".ed-scheduled-empty").hidden = items.length > 0;
    root.querySelector(".ed-scheduled-count").textContent = items.length ? `(${items.length})` : "";
    tickCountdowns();
  }

  function scheduledRow(item) {
    const row = el("li", "ed-scheduled-item");
    row.dataset.id = item.id;
    const head = el("div", "ed-entry-head");
    const when = el("span", "ed-time", dateTime.format(new Date(item.publish_at)));
    const countdown = el("span", "ed-countdown");
    countdown.dataset.at = item.publish_at;
    head.append(when, countdown, el("span", "ed-tag", `by ${item.token}`));
    row.append(head);
    if (item.entry.title) row.append(el("strong", "ed-title", item.entry.title));
    row.append(el("p", "ed-body", item.entry.body));
    const bar = el("div", "ed-actions");
    const edit = el("button", "ed-reschedule", "Edit");
    const cancel = el("button", "ed-cancel", "Cancel");
    edit.type = cancel.type = "button";
    edit.addEventListener("click", () => {
      bar.hidden = true;
      row.append(rescheduleForm(item, () => { bar.hidden = false; }));
    }, { once: true });
    let armed = null;
    cancel.addEventListener("click", async () => {
      if (!armed) {
        cancel.textContent = "Really cancel?";
        armed = setTimeout(() => { armed = null; cancel.textContent = "Cancel"; }, CONFIRM_MS);
        return;
      }
      clearTimeout(armed);
      cancel.disabled = true;
      try {
        await api("DELETE", feedPath(`/scheduled/${encodeURIComponent(item.id)}`));
        scheduled.delete(item.id);
        renderScheduled();
        say("Cancelled the scheduled entry.", false);
      } catch (err) {
        say(err.message, true);
        cancel.disabled = false;
      }
    });
    bar.append(edit, cancel);
    row.append(bar);
    return row;
  }

  function rescheduleForm(item, closed) {
    const form = el("form", "ed-correction");
    // Constant markup only; the entry's values go in through properties below.
    form.innerHTML = `<label class="ed-field">Title <input name="title" maxlength="300"></label>
      <label class="ed-field">Body <textarea name="body" rows="4" required></textarea></label>
      <label class="ed-field">Publish at <input name="publish_at" type="datetime-local" step="1" required></label>
      <div class="ed-actions"><button class="ed-primary">Save</button><button type="button" name="close">Close</button></div>`;
    const { title, body, publish_at: at, close } = form.elements;
    title.value = item.entry.title ?? "";
    body.value = item.entry.body;
    at.value = localInput(item.publish_at);
    const done = () => { form.remove(); closed(); };
    close.addEventListener("click", done);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const change = {};
      if (title.value !== (item.entry.title ?? "")) change.title = title.value || null;
      if (body.value !== item.entry.body) change.body = body.value;
      if (at.value !== localInput(item.publish_at)) change.publish_at = new Date(at.value).toISOString();
      if (!Object.keys(change).length) return done();
      try {
        const updated = await api("PATCH", feedPath(`/scheduled/${encodeURIComponent(item.id)}`), change);
        scheduled.set(updated.id, updated);
        renderScheduled();
      } catch (err) {
        say(err.message, true);
      }
    });
    return form;
  }

  function tickCountdowns() {
    for (const countdown of root.querySelectorAll(".ed-countdown")) {
      countdown.textContent = countdownText(Date.parse(countdown.dataset.at) - Date.now());
    }
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
    // A datetime-local value is the editor's own local time; the server wants RFC 3339.
    if (form.publish_at.value) body.publish_at = new Date(form.publish_at.value).toISOString();
    publishButton.disabled = true;
    try {
      // The same key on a retry after a network error: the server publishes once.
      const answer = await api("POST", feedPath("/entries"), body, { "Idempotency-Key": idempotencyKey });
      idempotencyKey = crypto.randomUUID();
      publishForm.reset();
      showPublishButton();
      if (answer.status === "scheduled") {
        say(`Scheduled for ${dateTime.format(new Date(answer.publish_at))}.`, false);
        await loadScheduled();
      } else {
        record(answer.id, answer.seq, "created", answer);
        say(`Published #${answer.seq}.`, false);
      }
    } catch (err) {
      say(err.message, true);
    } finally {
      publishButton.disabled = false;
    }
  });

  function showPublishButton() {
    publishButton.textContent = publishForm.elements.publish_at.value ? "Schedule" : "Publish";
  }
  publishForm.elements.publish_at.addEventListener("input", showPublishButton);

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
    // A correction being typed survives redraws (a receipt, another editor's change),
    // and so do open revisions.
    const editing = old?.querySelector(".ed-correction");
    if (editing && !retracted.has(id)) {
      row.append(editing);
      row.querySelector(".ed-actions").hidden = true;
    }
    const versions = old?.querySelector(".ed-revisions");
    if (versions) row.append(versions);
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
    const history = el("button", "ed-history", "Revisions");
    correct.type = retract.type = history.type = "button";
    correct.addEventListener("click", () => row.append(correctionForm(entry, row)), { once: true });
    history.addEventListener("click", () => showRevisions(entry.id));
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
    bar.append(correct, retract, history);
    return bar;
  }

  // Every version of an entry side by side, oldest first: when, by which token, what
  // it changed (highlighted), and the text it then had.
  async function showRevisions(id) {
    const row = list.querySelector(`li[data-id="${CSS.escape(id)}"]`);
    if (!row) return;
    row.querySelector(".ed-revisions")?.remove();
    const panel = el("div", "ed-revisions");
    row.append(panel);
    let trail;
    try {
      trail = await api("GET", feedPath(`/entries/${encodeURIComponent(id)}/revisions`));
    } catch (err) {
      panel.append(el("p", "ed-notice is-error", err.message));
      return;
    }
    const close = el("button", "ed-close", "Close revisions");
    close.type = "button";
    close.addEventListener("click", () => panel.remove());
    const columns = el("ol", "ed-versions");
    trail.revisions.forEach((version, i) => columns.append(versionColumn(version, i + 1)));
    if (!trail.revisions.length) panel.append(el("p", "ed-notice", "No revisions were kept for this entry."));
    panel.append(columns, close);
    if (trail.purged) {
      const { at, token, reason } = trail.purged;
      panel.append(el("p", "ed-notice is-error", `Purged ${dateTime.format(new Date(at))} by ${token}: ${reason}`));
    }
  }

  function versionColumn(version, number) {
    const column = el("li", "ed-version");
    const changed = new Set(version.changed);
    column.append(
      el("p", "ed-version-head", `Version ${number} · #${version.seq} · ${dateTime.format(new Date(version.updated_at))}`),
      el("p", "ed-version-by", `by ${version.token}; changed ${version.changed.map((f) => FIELD_NAMES[f] ?? f).join(", ") || "nothing"}`),
    );
    if (!version.entry) {
      column.append(el("p", "ed-version-gone", "Text removed by a purge."));
      return column;
    }
    for (const name of ["title", "body", "author", "pinned"]) {
      const value = version.entry[name];
      if (value === null || value === undefined || value === false) continue;
      const field = el("div", `ed-version-field${changed.has(name) ? " is-changed" : ""}`);
      field.dataset.field = name;
      field.append(el("span", "ed-version-name", FIELD_NAMES[name]), el("p", "ed-version-value", value === true ? "yes" : String(value)));
      column.append(field);
    }
    return column;
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

function statusWord(status) {
  return { live: "Live", paused: "Paused", ended: "Ended" }[status] ?? "Live";
}

// "in 1:05:09", "in 0:42", then "publishing…" once due (until its event arrives).
function countdownText(ms) {
  if (ms <= 0) return "publishing…";
  const total = Math.ceil(ms / 1000);
  const days = Math.floor(total / 86_400);
  const hours = Math.floor((total % 86_400) / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = String(total % 60).padStart(2, "0");
  const clockText = hours || days ? `${hours}:${String(minutes).padStart(2, "0")}:${seconds}` : `${minutes}:${seconds}`;
  return `in ${days ? `${days}d ` : ""}${clockText}`;
}

// An RFC 3339 time as a datetime-local input's value, in the editor's time zone.
function localInput(iso) {
  const moment = new Date(iso);
  const local = new Date(moment.getTime() - moment.getTimezoneOffset() * 60_000);
  return local.toISOString().slice(0, 19);
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
