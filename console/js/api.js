// The console's only way to data: the service's /v1 API on this origin, with the signed-in
// key as a bearer token. Amounts stay the API's decimal strings (JSON strings, never parsed
// into Numbers here).

import { session } from './session.js';
import { h } from './dom.js';

/** An answer that was not 2xx: status, the API's JSON body, and its message. */
export class ApiError extends Error {
  constructor(status, body, path) {
    const msg = (body && (body.error || body.message)) || `HTTP ${status}`;
    super(msg);
    this.status = status;
    this.body = body || {};
    this.path = path;
    this.reason = this.body.reason || null;
  }
}

/** Listeners told when the API answers 401 (the key is wrong, revoked or expired). */
export const onUnauthorized = new Set();

function url(path, params) {
  const u = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, String(v));
  }
  return u.pathname + u.search;
}

function headers(extra) {
  const h = { Accept: 'application/json', ...extra };
  const s = session();
  if (s && s.key) h.Authorization = `Bearer ${s.key}`;
  return h;
}

async function answer(res, path) {
  const text = await res.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = { error: text.trim() || `HTTP ${res.status}` };
  }
  if (res.status === 401) for (const f of onUnauthorized) f();
  if (!res.ok) throw new ApiError(res.status, body, path);
  return { status: res.status, body };
}

/** GET path?params -> the JSON body; throws ApiError. */
export async function get(path, params, { signal } = {}) {
  const p = url(path, params);
  const res = await fetch(p, { headers: headers(), signal, cache: 'no-store' });
  return (await answer(res, p)).body;
}

/** GET of a text resource (/readyz, /metrics): {status, text}; never throws on status. */
export async function getText(path, { signal } = {}) {
  const res = await fetch(path, { headers: headers({ Accept: 'text/plain, application/json' }), signal, cache: 'no-store' });
  return { status: res.status, text: await res.text(), type: res.headers.get('content-type') || '' };
}

/** POST path with a JSON body -> {status, body}; throws ApiError for non-2xx. */
export async function post(path, body, { signal } = {}) {
  const res = await fetch(path, {
    method: 'POST',
    headers: headers({ 'Content-Type': 'application/json' }),
    body: JSON.stringify(body),
    signal,
  });
  return answer(res, path);
}

/** PUT path with a JSON body -> {status, body}; throws ApiError for non-2xx. */
export async function put(path, body, { signal } = {}) {
  const res = await fetch(path, {
    method: 'PUT',
    headers: headers({ 'Content-Type': 'application/json' }),
    body: JSON.stringify(body),
    signal,
  });
  return answer(res, path);
}

/** DELETE path -> {status, body}. */
export async function del(path, { signal } = {}) {
  const res = await fetch(path, { method: 'DELETE', headers: headers(), signal });
  return answer(res, path);
}

/** encodeURIComponent for one path segment. */
export const seg = encodeURIComponent;

/**
 * Server-Sent Events over fetch (EventSource cannot send an Authorization header): calls
 * onEvent({id, event, data}) for each event, resumes after a dropped connection with
 * Last-Event-ID (waiting `retry` ms, 1 s by default), and ends when the server closes the
 * stream and finished() says the stream is complete (resolves; without finished, any clean
 * close ends it), when `signal` aborts (resolves) or on an HTTP error (rejects with
 * ApiError). onOpen() is called each time the stream (re)opens.
 */
export async function stream(path, params, { onEvent, onOpen, finished, signal, lastEventId = null, maxRetries = 20 }) {
  let last = lastEventId;
  let retry = 1000;
  let failures = 0;
  for (;;) {
    if (signal && signal.aborted) return;
    let res;
    try {
      const h = headers({ Accept: 'text/event-stream' });
      if (last !== null) h['Last-Event-ID'] = last;
      res = await fetch(url(path, params), { headers: h, signal, cache: 'no-store' });
    } catch (e) {
      if (signal && signal.aborted) return;
      failures += 1;
      if (failures > maxRetries) throw e;
      await sleep(retry, signal);
      continue;
    }
    if (!res.ok) await answer(res, path);
    failures = 0;
    if (onOpen) onOpen();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let ev = { data: [], event: 'message', id: null };
    let ended = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) {
          ended = true;
          break;
        }
        buf += value;
        let nl;
        while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + (buf.startsWith('\r\n', nl) ? 2 : 1));
          if (line === '') {
            if (ev.data.length) {
              if (ev.id !== null) last = ev.id;
              onEvent({ id: ev.id ?? last, event: ev.event, data: ev.data.join('\n') });
            }
            ev = { data: [], event: 'message', id: null };
          } else if (!line.startsWith(':')) {
            const c = line.indexOf(':');
            const name = c < 0 ? line : line.slice(0, c);
            let val = c < 0 ? '' : line.slice(c + 1);
            if (val.startsWith(' ')) val = val.slice(1);
            if (name === 'data') ev.data.push(val);
            else if (name === 'event') ev.event = val;
            else if (name === 'id') ev.id = val;
            else if (name === 'retry' && /^\d+$/.test(val)) retry = Number(val);
          }
        }
      }
    } catch (e) {
      if (signal && signal.aborted) return;
      // A dropped connection: resume from the last id.
    }
    if (ended && (!finished || finished())) return;
    await sleep(retry, signal);
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    if (signal) signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

/** An error message for a page: the API's text, with what it means for 403/404/503. */
export function errorFor(e) {
  if (!(e instanceof ApiError)) return h('p', { class: 'error', role: 'alert' }, `The console could not load this: ${e.message}`);
  let text = e.message;
  if (e.status === 404) text = `Not found: ${e.message}`;
  else if (e.status === 503) text = `The service cannot answer this now: ${e.message}`;
  else if (e.status === 403) text = `This key may not do that: ${e.message}`;
  return h('p', { class: 'error', role: 'alert', dataset: { status: String(e.status) } }, text);
}
