// The page's access to the HTTP API: the bearer token (kept for this tab in
// sessionStorage, sent on every request), login for the session cookie the
// EventSource needs, JSON GETs that give up after a timeout, and the label
// event stream (SSE) kept open across server restarts.

const STREAM_RETRY_MIN_MS = 500;
const STREAM_RETRY_MAX_MS = 5000;
const TOKEN_KEY = 'infercast.token';

/** The server wants a (valid) token: show the login form. */
export class AuthError extends Error {
  constructor(status) {
    super(status === 403 ? 'this token may not do that' : 'a token is needed');
    this.status = status;
  }
}

/** `Authorization` for fetch, when the user gave a token in this tab. */
export function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export function hasToken() {
  return sessionStorage.getItem(TOKEN_KEY) != null;
}

/**
 * Logs in with `token`: the server checks it and sets the HttpOnly session
 * cookie the label stream rides on; the token is kept for this tab only.
 * Throws AuthError for a wrong token.
 */
export async function login(token) {
  const res = await fetch('/api/login', {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(5000),
  });
  if (res.status === 401 || res.status === 403) throw new AuthError(res.status);
  if (!res.ok) throw new Error(`login: HTTP ${res.status}`);
  sessionStorage.setItem(TOKEN_KEY, token);
}

/** GET `path` as JSON; throws AuthError on 401/403, Error on a network error, a timeout or another non-2xx. */
export async function getJson(path, timeoutMs = 5000) {
  const res = await fetch(path, { cache: 'no-store', headers: authHeaders(), signal: AbortSignal.timeout(timeoutMs) });
  if (res.status === 401 || res.status === 403) throw new AuthError(res.status);
  if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status}`);
  return res.json();
}

/**
 * POSTs `body` as JSON to `path`; resolves to the response, or null on a
 * network error or after `timeoutMs` (for reports nobody waits on).
 */
export async function postJson(path, body, timeoutMs = 5000) {
  try {
    return await fetch(path, {
      method: 'POST',
      headers: { ...authHeaders(), 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch {
    return null;
  }
}

/**
 * Follows `/api/labels/stream`: `onLabel(label)` per `label` event, `onOpen()`
 * each time the stream (re)opens, so the caller can fetch what it missed.
 */
export function watchLabels({ onLabel, onOpen }) {
  let retryMs = STREAM_RETRY_MIN_MS;
  const open = () => {
    const source = new EventSource('/api/labels/stream');
    source.addEventListener('open', () => {
      retryMs = STREAM_RETRY_MIN_MS;
      onOpen();
    });
    source.addEventListener('label', (e) => {
      try {
        onLabel(JSON.parse(e.data));
      } catch (err) {
        console.warn('bad label event', err);
      }
    });
    source.addEventListener('error', () => {
      // While readyState is CONNECTING the browser retries by itself; after an
      // HTTP error or a wrong content type it gives up (CLOSED): open anew then.
      if (source.readyState !== EventSource.CLOSED) return;
      setTimeout(open, retryMs);
      retryMs = Math.min(retryMs * 2, STREAM_RETRY_MAX_MS);
    });
  };
  open();
}
