// The demo page: generate, watch the page build itself from events, drop the connection
// and resume, replay past requests, and fill editor fields one by one.
import {
  GenstreamError,
  cancelRequest,
  getPage,
  getRequest,
  requestAssistant,
  streamAssistantResponse,
} from "./genstream.js";

const $ = (id) => document.getElementById(id);
const RESUME_AFTER_MS = 1500;
const EXAMPLES = {
  generate: "A landing page for a family bakery in Lyon with fresh bread and pastries",
  edit: "Make the hero section warmer and mention our sourdough",
  chat: "How should I structure the landing page of a bakery?",
  field: "Write the hero section copy",
};
const BUTTON_LABELS = { generate: "Generate", edit: "Edit page", chat: "Ask", field: "Fill fields" };

// --- the page, folded from events exactly as app/domain/projections.py fold_page does ------

function positionKey(c) {
  return /^[0-9]+$/.test(c.position) ? [0, Number(c.position), "", c.index] : [1, 0, c.position, c.index];
}

function byPosition(a, b) {
  const ka = positionKey(a);
  const kb = positionKey(b);
  for (let n = 0; n < ka.length; n += 1) {
    if (ka[n] < kb[n]) return -1;
    if (ka[n] > kb[n]) return 1;
  }
  return 0;
}

export class PageFold {
  constructor() {
    this.byIndex = new Map(); // index -> {name, position, status}
    this.parents = new Map();
    this.content = new Map(); // index -> [delta, ...]
    this.removed = new Set();
    this.chunks = [];
    this.atSeq = 0;
  }

  apply(event) {
    this.atSeq = event.seq;
    switch (event.type) {
      case "created":
        if (event.mode === "edit") this.seed(event.context?.page ?? null, null);
        break;
      case "content_block_start":
        this.add(event.index, event.name, event.position, "streaming", "", event.parent ?? null);
        break;
      case "content_block_delta":
        this.content.get(event.index)?.push(event.delta);
        break;
      case "content_block_stop":
        if (this.byIndex.has(event.index)) this.byIndex.get(event.index).status = event.status;
        break;
      case "response_chunk":
        this.chunks.push(event.delta);
        break;
      case "action":
        this.applyAction(event);
        break;
      default:
    }
  }

  applyAction(a) {
    const isText = (v) => typeof v === "string";
    if (a.action === "update_component" && Number.isInteger(a.index) && isText(a.content)) {
      if (!this.byIndex.has(a.index)) return;
      this.content.set(a.index, [a.content]);
      if (a.name) this.byIndex.get(a.index).name = a.name;
    } else if (a.action === "insert_component" && isText(a.name) && isText(a.content)) {
      const i = Math.max(-1, ...this.byIndex.keys()) + 1;
      const after = a.after_index ?? null;
      const parent = after === null ? null : (this.parents.get(after) ?? null);
      this.add(i, a.name, a.position || String(i), "ok", a.content, parent);
    } else if (a.action === "remove_component" && Number.isInteger(a.index)) {
      this.removed.add(a.index);
    }
  }

  add(index, name, position, status, content, parent) {
    this.byIndex.set(index, { name, position, status });
    this.parents.set(index, parent);
    this.content.set(index, content ? [content] : []);
  }

  seed(page, parent) {
    const components = page && !Array.isArray(page) ? page.components : page;
    if (!Array.isArray(components)) return;
    for (const item of components) {
      if (!item || typeof item !== "object" || !Number.isInteger(item.index)) continue;
      this.add(
        item.index,
        String(item.name ?? "Component"),
        String(item.position ?? item.index),
        String(item.status ?? "ok"),
        String(item.content ?? ""),
        parent,
      );
      this.seed(item.children ?? null, item.index);
    }
  }

  /** {at_seq, components, text}: the shape of GET /assistant/requests/{id}/page. */
  page() {
    const views = new Map();
    for (const [index, c] of this.byIndex) {
      const content = this.content.get(index).join("");
      views.set(index, { index, name: c.name, position: c.position, status: c.status, content, children: [] });
    }
    const roots = [];
    for (const [index, view] of views) {
      const parent = this.parents.get(index);
      if (this.removed.has(index) || (parent !== null && this.removed.has(parent))) continue;
      if (parent !== null && views.has(parent)) views.get(parent).children.push(view);
      else roots.push(view);
    }
    for (const view of views.values()) view.children.sort(byPosition);
    roots.sort(byPosition);
    return { at_seq: this.atSeq, components: roots, text: this.chunks.join("") };
  }
}

// --- rendering into the sandboxed iframe -----------------------------------------------------

const PREVIEW_CSS = `
body { margin: 0; font-family: Georgia, "DejaVu Serif", serif; color: #2a2118; background: #fffdf9; }
.gs-c { position: relative; margin: 10px; padding: 18px 22px; border: 1px dashed transparent; border-radius: 8px; }
.gs-c::before { content: attr(data-component); position: absolute; top: -8px; left: 10px; padding: 0 6px;
  font: 11px/16px ui-monospace, "DejaVu Sans Mono", monospace; color: #8a7a66; background: #fffdf9; }
.gs-streaming { border-color: #3856d8; background: #f7f8fe; }
.gs-streaming::after { content: "\\258d"; color: #3856d8; animation: blink 1s steps(1) infinite; }
@keyframes blink { 50% { opacity: 0; } }
.gs-c .gs-c { margin: 10px 0; border-color: #eadfce; }
section, footer { display: block; }
h1 { font-size: 30px; margin: 0 0 8px; }
h2 { font-size: 21px; margin: 0 0 10px; }
h3 { font-size: 16px; margin: 0 0 4px; }
p { margin: 0 0 8px; line-height: 1.45; }
.hero { padding: 26px; border-radius: 10px; background: linear-gradient(135deg, #f6e7cf, #f9d9b8); }
.button { display: inline-block; margin-top: 6px; padding: 8px 16px; border-radius: 6px;
  background: #7a3e12; color: #fff; text-decoration: none; font-family: system-ui, sans-serif; }
.features article, .plan, blockquote, figure { padding: 10px 14px; border-radius: 8px; background: #f8f1e7; }
.plan { display: inline-block; min-width: 140px; margin-right: 8px; }
blockquote { margin: 0 0 8px; font-style: italic; }
cite { display: block; font-size: 13px; color: #7b6a58; }
figure { display: inline-block; margin: 0 8px 8px 0; min-width: 160px; min-height: 70px; }
details { margin-bottom: 6px; }
footer { color: #6b5a48; font-size: 14px; }
.gs-empty { margin: 40px; color: #9a8f84; font-family: system-ui, sans-serif; }
`;

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

function renderComponent(c) {
  if (c.status === "rejected") return ""; // never rendered, nor anything nested in it
  const children = c.children.map(renderComponent).join("");
  let body = c.content.replace(/\bclassName=/g, "class=");
  // Children go inside a finished parent's outer element; while it streams, after its text.
  const tail = c.status === "ok" ? /<\/[A-Za-z][\w-]*>\s*$/.exec(body) : null;
  body = tail ? body.slice(0, tail.index) + children + body.slice(tail.index) : body + children;
  return `<div class="gs-c gs-${escapeHtml(c.status)}" data-component="${escapeHtml(c.name)}">${body}</div>`;
}

/** The iframe document for a page's components (the same HTML for the same page). */
export function renderPage(components, emptyText = "The generated page appears here.") {
  const body = components.map(renderComponent).join("") || `<p class="gs-empty">${escapeHtml(emptyText)}</p>`;
  return `<!doctype html><html><head><meta charset="utf-8"><style>${PREVIEW_CSS}</style></head><body>${body}</body></html>`;
}

function renderFields(values) {
  const hero = [
    `<h1>${escapeHtml(values.title || "...")}</h1>`,
    `<p>${escapeHtml(values.subtitle || "...")}</p>`,
    `<a class="button">${escapeHtml(values.cta || "...")}</a>`,
  ].join("");
  return renderPage([
    { index: 0, name: "HeroSection-1", position: "0", status: "ok", content: `<section class="hero">${hero}</section>`, children: [] },
  ]);
}

// --- state and the event timeline ------------------------------------------------------------

const state = { current: null, history: [], lastPageRequestId: null };

function token() {
  return $("token").value.trim() || undefined;
}

function setStatus(status) {
  $("request-status").textContent = status;
  $("request-status").dataset.status = status;
}

function setConnection(connection) {
  $("connection").textContent = connection;
  $("connection").dataset.state = connection;
}

function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  if (error instanceof GenstreamError && error.status === 401) {
    box.textContent = `This server requires a token: paste one under "Token" (top right). (${error.detail})`;
    $("auth").open = true;
  } else if (error instanceof GenstreamError) {
    box.textContent = `${error.code}: ${error.detail}`;
  } else {
    box.textContent = String(error.message || error);
  }
  box.hidden = false;
}

function summary(e) {
  const cut = (text, n = 60) => (text.length > n ? `${text.slice(0, n)}...` : text);
  switch (e.type) {
    case "created": return `${e.mode}: ${cut(e.prompt)}`;
    case "status": return `${e.status}${e.queue_position ? ` (queue ${e.queue_position})` : ""} ${e.message}`;
    case "stage": return `${e.stage} ${e.progress}% ${e.message}`;
    case "response_chunk": return JSON.stringify(cut(e.delta, 48));
    case "content_block_start": return `${e.name} #${e.index} at ${e.position}${e.parent != null ? ` in #${e.parent}` : ""}`;
    case "content_block_delta": return `#${e.index} +${e.delta.length} chars`;
    case "content_block_stop": return `#${e.index} ${e.status}, ${e.size} chars${e.reason ? `: ${e.reason}` : ""}`;
    case "action": return `${e.action} ${e.element_id ?? (e.index != null ? `#${e.index}` : e.name ?? "")}${e.value ? ` = ${JSON.stringify(cut(e.value, 40))}` : ""}`;
    case "complete": return `${e.components.length} components, ${e.usage.total_tokens} tokens, ${e.elapsed_ms} ms`;
    case "error": return `${e.code}: ${e.message}`;
    case "cancelled": return e.reason;
    default: return "";
  }
}

function addEventRow(event) {
  const li = document.createElement("li");
  li.className = `ev ev-${event.type}${event.status === "rejected" ? " rejected" : ""}`;
  li.dataset.seq = String(event.seq);
  li.dataset.type = event.type;
  const seq = document.createElement("span");
  seq.className = "seq";
  seq.textContent = `#${event.seq}`;
  const type = document.createElement("span");
  type.className = "type";
  type.textContent = event.type;
  const text = document.createElement("span");
  text.className = "summary";
  text.textContent = summary(event);
  li.append(seq, type, text);
  appendRow(li);
}

function addMarker(text, kind = "") {
  const li = document.createElement("li");
  li.className = `marker ${kind}`.trim();
  li.textContent = text;
  appendRow(li);
}

function appendRow(li) {
  const list = $("timeline");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 30;
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// --- following one request -------------------------------------------------------------------

let renderTimer = null;

function render(run) {
  clearTimeout(renderTimer);
  renderTimer = null;
  if (run !== state.current) return;
  const html = run.fields ? renderFields(run.fields.values) : renderPage(run.fold.page().components);
  if ($("preview").srcdoc !== html) $("preview").srcdoc = html;
  $("text").textContent = run.fold.chunks.join("");
}

function scheduleRender(run) {
  // Re-rendering the iframe on every event would flicker: at most ~12 times a second.
  if (renderTimer === null) renderTimer = setTimeout(() => render(run), 80);
}

function setBusy(busy, { live = true } = {}) {
  $("send").disabled = busy;
  $("replay-go").disabled = busy;
  $("cancel").disabled = !(busy && live);
  $("drop").disabled = !busy;
  $("typing").hidden = !busy;
}

/** Follow a request's stream (or replay) into the preview and timeline; resolves at its end. */
function follow(handle, { mode, replaySpeed = null, fields = null }) {
  const run = {
    handle,
    mode,
    replaySpeed,
    fields,
    fold: new PageFold(),
    seqs: [],
    drops: 0,
    dropping: false,
    finished: false,
    terminal: null,
    sub: null,
  };
  state.current = run;
  $("request-id").textContent = handle.requestId;
  $("last-seq").textContent = "-";
  setStatus(replaySpeed === null ? "queued" : `replay ${replaySpeed}x`);
  setBusy(true, { live: replaySpeed === null });
  $("typing-text").textContent = replaySpeed === null ? "waiting for a runner" : "replaying";
  render(run);
  run.promise = new Promise((resolve) => {
    run.resolve = resolve;
  });
  connect(run, 0);
  return run.promise;
}

function connect(run, lastEventId) {
  const sub = streamAssistantResponse(run.handle, {
    lastEventId,
    replaySpeed: run.replaySpeed,
    token: token(),
    onOpen: (at) => {
      setConnection("live");
      addMarker(at.lastEventId ? `connected, resuming after #${at.lastEventId}` : "connected");
    },
    onReconnecting: (at) => {
      setConnection("reconnecting");
      addMarker(`connection lost after #${at.lastEventId}; reconnecting`, "dropped");
    },
    onEvent: (event) => onEvent(run, event),
  });
  run.sub = sub;
  sub.done.then(
    async (terminal) => {
      if (run.dropping || run.finished) return; // closed by the drop button
      // 204: the server says this client already has the terminal event.
      const info = await getRequest(run.handle.requestId, { token: token() });
      finish(run, terminal ?? info.body.result);
    },
    (error) => {
      if (run.finished) return;
      addMarker(`stream failed: ${error.code || error.message}`, "failure");
      showError(error);
      finish(run, null);
    },
  );
}

function onEvent(run, event) {
  if (run !== state.current || run.finished) return;
  run.seqs.push(event.seq);
  run.fold.apply(event);
  addEventRow(event);
  $("last-seq").textContent = `#${event.seq}`;
  if (run.replaySpeed === null) {
    if (event.type === "status") setStatus(event.status);
    if (event.type === "stage") $("typing-text").textContent = event.message || event.stage;
  }
  if (run.fields) fillField(run.fields, event);
  if (event.type === "content_block_start") $("typing-text").textContent = `writing ${event.name}`;
  if (["complete", "error", "cancelled"].includes(event.type)) finish(run, event);
  else scheduleRender(run);
}

function fillField(fields, event) {
  const input = fields.element.querySelector("input, textarea");
  if (event.type === "response_chunk") {
    input.value += event.delta;
  } else if (event.type === "action" && event.action === "set_field") {
    if (event.element_id !== fields.element.dataset.elementId) return; // not this editor's
    input.value = event.value;
  } else {
    return;
  }
  fields.values[fields.element.dataset.field] = input.value;
}

function finish(run, terminal) {
  if (run.finished) return;
  run.finished = true;
  run.terminal = terminal;
  run.sub?.close();
  const outcome = { complete: "completed", error: "failed", cancelled: "cancelled" };
  if (run.replaySpeed === null) setStatus(terminal ? outcome[terminal.type] : "unknown");
  else setStatus(terminal ? `replayed: ${outcome[terminal.type]}` : "replay stopped");
  document.body.dataset.lastRun = run.replaySpeed === null ? "live" : "replay";
  setConnection("closed");
  setBusy(false);
  render(run);
  if (terminal?.type === "error") showError(new GenstreamError(null, terminal.code, terminal.message));
  if (terminal?.type === "complete" && ["generate", "edit"].includes(run.mode)) {
    state.lastPageRequestId = run.handle.requestId;
  }
  run.resolve(terminal);
}

/** Close the EventSource now; a moment later open a new one after the last event seen. */
function dropConnection() {
  const run = state.current;
  if (!run || run.finished || run.dropping) return;
  const after = run.sub.lastEventId;
  run.dropping = true;
  run.drops += 1;
  run.sub.close();
  setConnection("dropped");
  $("drop").disabled = true;
  addMarker(`connection dropped after #${after}; resuming in ${RESUME_AFTER_MS / 1000} s`, "dropped");
  setTimeout(() => {
    if (run !== state.current || run.finished) return;
    run.dropping = false;
    addMarker(`reconnecting with last_event_id=${after}`);
    $("drop").disabled = false;
    connect(run, after);
  }, RESUME_AFTER_MS);
}

function remember(handle, mode, prompt) {
  state.history.unshift({ requestId: handle.requestId, mode, prompt });
  const past = $("past");
  if (past.options.length === 1 && !past.options[0].value) past.remove(0);
  const option = document.createElement("option");
  option.value = handle.requestId;
  option.textContent = `${mode}: ${prompt.slice(0, 32)} (${handle.requestId.slice(-6)})`;
  past.prepend(option);
  past.value = handle.requestId;
}

// --- actions ---------------------------------------------------------------------------------

async function ask(event) {
  event.preventDefault();
  showError(null);
  const mode = $("mode").value;
  const prompt = $("prompt").value.trim();
  setStatus("sending");
  setBusy(true, { live: false });
  try {
    if (mode === "field") {
      await fillFields(prompt);
      return;
    }
    let context;
    if (mode === "edit") {
      if (!state.lastPageRequestId) {
        showError(new Error("Generate a page first: edit mode edits the last generated page."));
        setStatus("idle");
        setBusy(false);
        return;
      }
      context = { page: await getPage(state.lastPageRequestId, { token: token() }) };
    }
    $("timeline").replaceChildren();
    const handle = await requestAssistant(prompt, { mode, context, token: token() });
    remember(handle, mode, prompt);
    await follow(handle, { mode });
  } catch (error) {
    showError(error);
    setStatus("not sent");
    setBusy(false);
  }
}

async function fillFields(prompt) {
  const trackId = `demo-${Date.now().toString(36)}`;
  const elements = [...document.querySelectorAll("#fields .field")];
  const values = {};
  for (const element of elements) {
    element.classList.remove("filling", "filled");
    element.querySelector("input, textarea").value = "";
  }
  $("timeline").replaceChildren();
  for (const element of elements) {
    const context = {
      element_id: element.dataset.elementId,
      field: element.dataset.field,
      field_type: element.dataset.fieldType,
      business_description: $("business").value,
    };
    element.classList.add("filling");
    addMarker(`field ${context.element_id}`);
    const handle = await requestAssistant(prompt, { mode: "field", trackId, context, token: token() });
    remember(handle, "field", `${context.field}: ${prompt}`);
    const terminal = await follow(handle, { mode: "field", fields: { element, values } });
    element.classList.remove("filling");
    if (terminal?.type !== "complete") return;
    element.classList.add("filled");
  }
  document.body.dataset.fieldsTrack = trackId;
}

async function replay(event) {
  event.preventDefault();
  showError(null);
  const requestId = $("replay-id").value.trim() || $("past").value;
  if (!requestId) {
    showError(new Error("Pick a past request or paste a request ID to replay."));
    return;
  }
  try {
    // A fresh handle: its streamUrl carries a new token for this request when auth is on.
    const handle = await getRequest(requestId, { token: token() });
    $("timeline").replaceChildren();
    addMarker(`replay at ${$("speed").selectedOptions[0].textContent}`);
    await follow(handle, { mode: handle.body.mode, replaySpeed: Number($("speed").value) });
  } catch (error) {
    showError(error);
    setBusy(false);
  }
}

async function cancel() {
  const run = state.current;
  if (!run || run.finished) return;
  try {
    await cancelRequest(run.handle.requestId, { token: token() });
  } catch (error) {
    showError(error);
  }
}

function switchMode() {
  const mode = $("mode").value;
  $("fields").hidden = mode !== "field";
  $("send").textContent = BUTTON_LABELS[mode];
  if (Object.values(EXAMPLES).includes($("prompt").value.trim())) $("prompt").value = EXAMPLES[mode];
}

$("ask").addEventListener("submit", ask);
$("replay").addEventListener("submit", replay);
$("cancel").addEventListener("click", cancel);
$("drop").addEventListener("click", dropConnection);
$("mode").addEventListener("change", switchMode);
$("preview").srcdoc = renderPage([]);
switchMode();

// For the browser tests and the curious: what the page holds right now.
window.genstreamDemo = {
  renderPage,
  snapshot() {
    const run = state.current;
    if (!run) return null;
    return {
      requestId: run.handle.requestId,
      finished: run.finished,
      terminal: run.terminal,
      seqs: run.seqs.slice(),
      drops: run.drops,
      lastEventId: run.sub?.lastEventId ?? 0,
      page: run.fold.page(),
      srcdoc: $("preview").srcdoc,
    };
  },
};
document.body.dataset.ready = "true";
