// genstream browser client: request a generation, stream its events, get the outcome.
// A dependency-free ES module. Streams use EventSource, which resumes by itself with
// Last-Event-ID after a dropped connection; events carry the wire JSON unchanged
// ({request_id, seq, type, at, ...payload}). Errors are GenstreamError (problem details).

export const EVENT_TYPES = [
  "created", "status", "stage", "response_chunk", "content_block_start",
  "content_block_delta", "content_block_stop", "action", "cancel_requested",
  "complete", "error", "cancelled",
];
export const TERMINAL_TYPES = new Set(["complete", "error", "cancelled"]);
const OUTCOME = { complete: "completed", error: "failed", cancelled: "cancelled" };

/** A failed call: an HTTP problem (status, code, detail), or no answer (status null). */
export class GenstreamError extends Error {
  constructor(status, code, detail, problem = {}) {
    super(status === null ? `${code}: ${detail}` : `${status} ${code}: ${detail}`);
    this.name = "GenstreamError";
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.problem = problem;
  }

  /** Whether the same call may succeed later: no answer, 429, or a server error. */
  get retryable() {
    return this.status === null || this.status === 429 || this.status >= 500;
  }
}

/** The GenstreamError an error response stands for. */
export async function problemError(response) {
  let problem = {};
  if ((response.headers.get("content-type") || "").includes("json")) {
    try {
      problem = await response.json();
    } catch {
      problem = {};
    }
  }
  return new GenstreamError(
    response.status,
    problem.code || `http_${response.status}`,
    problem.detail || response.statusText || "no detail",
    problem,
  );
}

/** `path` (as the server returns it, from its root) under `baseUrl` ("" = this origin). */
export function joinUrl(baseUrl, path) {
  if (/^https?:\/\//.test(path)) return path;
  return `${(baseUrl || "").replace(/\/+$/, "")}/${path.replace(/^\/+/, "")}`;
}

/** `url` with `params` set in its query string (relative URLs stay relative). */
export function withQuery(url, params) {
  const parsed = new URL(url, "http://relative.invalid");
  for (const [key, value] of Object.entries(params)) parsed.searchParams.set(key, String(value));
  return parsed.origin === "http://relative.invalid"
    ? `${parsed.pathname}${parsed.search}`
    : parsed.toString();
}

async function call(method, path, { baseUrl = "", token, body, headers = {}, timeoutMs = 30000 }) {
  const init = { method, headers: { Accept: "application/json", ...headers }, cache: "no-store" };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  init.signal = AbortSignal.timeout(timeoutMs);
  let response;
  try {
    response = await fetch(joinUrl(baseUrl, path), init);
  } catch (error) {
    if (error.name === "TimeoutError") {
      throw new GenstreamError(null, "timeout", `${method} ${path} got no answer in ${timeoutMs} ms`);
    }
    throw new GenstreamError(null, "unreachable", `${method} ${path} failed: ${error.message}`);
  }
  if (!response.ok) throw await problemError(response);
  return response;
}

function handleFrom(body, isNew) {
  return {
    requestId: body.request_id,
    status: body.status,
    streamUrl: body.stream_url,
    createdAt: body.created_at,
    new: isNew,
  };
}

/**
 * Queue a generation. Resolves to {requestId, status, streamUrl, createdAt, new}; streamUrl
 * carries a token scoped to this request when the server requires auth.
 */
export async function requestAssistant(prompt, options = {}) {
  const { mode = "generate", trackId, context, idempotencyKey } = options;
  const body = { prompt, mode };
  if (trackId != null) body.track_id = trackId;
  if (context != null) body.context = context;
  const headers = idempotencyKey ? { "Idempotency-Key": idempotencyKey } : {};
  const response = await call("POST", "/assistant/request", { ...options, body, headers });
  return handleFrom(await response.json(), response.status === 201);
}

/** A request's status (with its result once terminal) and a fresh streamUrl. */
export async function getRequest(requestId, options = {}) {
  const response = await call("GET", `/assistant/requests/${requestId}`, options);
  const body = await response.json();
  return { ...handleFrom(body, false), body };
}

/** The page projected from a request's events (up to seq `at` when given). */
export async function getPage(requestId, options = {}) {
  const query = options.at != null ? `?at=${options.at}` : "";
  const response = await call("GET", `/assistant/requests/${requestId}/page${query}`, options);
  return response.json();
}

/** Cancel a request (idempotent); a 409 GenstreamError once it completed or failed. */
export async function cancelRequest(requestId, options = {}) {
  const response = await call("POST", `/assistant/requests/${requestId}/cancel`, options);
  return (await response.json()).status;
}

/**
 * Follow a request's events: `handle` is what requestAssistant or getRequest returned.
 *
 * Options: baseUrl, lastEventId (resume after this seq), replaySpeed (replay the stored
 * events at their original pacing scaled by it, 0 = no delay, instead of the live stream),
 * token (a Bearer token, used only to fetch a fresh streamUrl when the scoped token in it
 * has expired), and callbacks onEvent(event), onOpen({lastEventId}),
 * onReconnecting({lastEventId}), onError(GenstreamError). Each event is delivered once, in
 * seq order. The returned subscription has close(), lastEventId, and `done`: a promise of
 * the terminal event (null when closed first, or when the server answered 204: the terminal
 * event was seen already). It rejects with a GenstreamError when the stream cannot go on
 * (e.g. 401, 404, 410).
 */
export function streamAssistantResponse(handle, options = {}) {
  const { baseUrl = "", token, onEvent, onOpen, onReconnecting, onError, replaySpeed } = options;
  let streamUrl = handle.streamUrl || `/assistant/stream/${handle.requestId}`;
  let refreshed = false;
  let last = Number(options.lastEventId || 0);
  // Where to (re)connect: the live stream resumes after ?last_event_id=, a replay at ?from=.
  const target = () => {
    let url = streamUrl;
    if (replaySpeed != null) {
      url = withQuery(url.replace("/assistant/stream/", "/assistant/replay/"), {
        speed: replaySpeed,
      });
    }
    if (last) {
      url = withQuery(url, replaySpeed != null ? { from: last + 1 } : { last_event_id: last });
    }
    return joinUrl(baseUrl, url);
  };
  let source = null;
  let finished = false;
  let failures = 0;
  let settle;
  const done = new Promise((resolve, reject) => {
    settle = { resolve, reject };
  });

  const finish = (terminal, error) => {
    if (finished) return;
    finished = true;
    source?.close();
    if (error) {
      onError?.(error);
      settle.reject(error);
    } else {
      settle.resolve(terminal);
    }
  };

  const onFrame = (message) => {
    // "error" is both an event type of the log and EventSource's connection-error event.
    if (finished || !(message instanceof MessageEvent)) return;
    const event = JSON.parse(message.data);
    if (event.seq <= last) return; // never twice, whatever the server resends
    last = event.seq;
    failures = 0;
    if (TERMINAL_TYPES.has(event.type)) finish(event); // `done` settles after onEvent ran
    onEvent?.(event);
  };

  // EventSource ends for good (readyState CLOSED) on any non-200 answer, and does not say
  // which: 204 means the terminal event was seen already, anything else is an error.
  const probe = async () => {
    const abort = new AbortController();
    let response;
    try {
      response = await fetch(target(), {
        headers: { Accept: "text/event-stream" },
        cache: "no-store",
        signal: abort.signal,
      });
    } catch (error) {
      return retry(new GenstreamError(null, "unreachable", error.message));
    }
    if (finished) return abort.abort();
    if (response.status === 204) {
      abort.abort();
      return finish(null);
    }
    if (response.ok) {
      abort.abort(); // the failure has passed: stream again with EventSource
      return retry(null);
    }
    const error = await problemError(response);
    if (response.status === 401 && token && !refreshed) {
      // The stream URL's token expired: the Bearer token gets a fresh one, once.
      refreshed = true;
      try {
        streamUrl = (await getRequest(handle.requestId, { baseUrl, token })).streamUrl;
      } catch (refusal) {
        return finish(null, refusal);
      }
      return open();
    }
    return error.retryable ? retry(error) : finish(null, error);
  };

  const retry = (error) => {
    if (finished) return;
    failures += 1;
    if (failures > 10) {
      finish(null, error || new GenstreamError(null, "stream_unavailable", "gave up"));
      return;
    }
    const delay = Math.min(30000, 1000 * 2 ** (failures - 1)) * (1 - Math.random() * 0.25);
    onReconnecting?.({ lastEventId: last, error, delayMs: delay });
    setTimeout(open, delay);
  };

  function open() {
    if (finished) return;
    // A new EventSource cannot set Last-Event-ID; the query parameter says the same.
    source = new EventSource(target());
    for (const type of EVENT_TYPES) source.addEventListener(type, onFrame);
    source.onopen = () => onOpen?.({ lastEventId: last });
    source.onerror = (event) => {
      if (finished || event instanceof MessageEvent) return; // a log event, handled above
      if (source.readyState === EventSource.CONNECTING) {
        onReconnecting?.({ lastEventId: last, error: null }); // it resumes by itself
      } else {
        source.close();
        probe();
      }
    };
  }

  open();
  return {
    requestId: handle.requestId,
    done,
    get lastEventId() {
      return last;
    },
    get closed() {
      return finished;
    },
    /** Stop streaming (the generation goes on; resume later with lastEventId). */
    close() {
      finish(null);
    },
  };
}

/**
 * Request a generation and follow it to the end. Resolves to {requestId, status, terminal,
 * events}; a failed or cancelled generation resolves too (see status).
 */
export async function interactWithAssistant(prompt, options = {}) {
  const handle = await requestAssistant(prompt, options);
  const events = [];
  const subscription = streamAssistantResponse(handle, {
    ...options,
    onEvent: (event) => {
      events.push(event);
      options.onEvent?.(event);
    },
  });
  let terminal = await subscription.done;
  if (terminal === null) {
    terminal = (await getRequest(handle.requestId, options)).body.result;
  }
  return { requestId: handle.requestId, status: OUTCOME[terminal.type], terminal, events };
}
