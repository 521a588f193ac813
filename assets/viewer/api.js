// The page's access to the HTTP API: JSON GETs that give up after a timeout,
// and the label event stream (SSE) kept open across server restarts.

const STREAM_RETRY_MIN_MS = 500;
const STREAM_RETRY_MAX_MS = 5000;

/** GET `path` as JSON; throws on a network error, a timeout or a non-2xx status. */
export async function getJson(path, timeoutMs = 5000) {
  const res = await fetch(path, { cache: 'no-store', signal: AbortSignal.timeout(timeoutMs) });
  if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status}`);
  return res.json();
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
