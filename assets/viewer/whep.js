// WHEP client (RFC 9725): one receive-only video session with the server.
// Owns the RTCPeerConnection, the POST of the offer, the ICE restart over
// PATCH, the DELETE of the session resource, and (when asked) the `labels`
// data channel, whose messages it hands on. Non-trickle: the offer goes
// out at once, without waiting for candidates; the server answers with its
// own and learns ours from the ICE checks. Knows nothing about pages, tiles
// or retries.

import { authHeaders } from './api.js';

/** A failed WHEP request; `status` is the HTTP status (0: no response). */
export class WhepError extends Error {
  constructor(status, message) {
    super(message);
    this.name = 'WhepError';
    this.status = status;
  }
}

/** `{error, message}` from a JSON error body, else the body's first line. */
async function describeFailure(res) {
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    return body.message || body.error || `HTTP ${res.status}`;
  } catch {
    return text.split('\n')[0].slice(0, 200) || `HTTP ${res.status}`;
  }
}

const SDP_FRAGMENT = 'application/trickle-ice-sdpfrag';

/** Resolves once ICE gathering is complete, or after `ms`. */
function gathered(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== 'complete') return;
      pc.removeEventListener('icegatheringstatechange', done);
      resolve();
    };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, ms);
  });
}

/** RFC 8840 fragment of `sdp`: credentials, the first m-line and mid, its candidates. */
export function sdpFragment(sdp) {
  const lines = sdp.split(/\r?\n/);
  const first = lines.findIndex((l) => l.startsWith('m='));
  const next = lines.findIndex((l, i) => i > first && l.startsWith('m='));
  const section = lines.slice(first, next < 0 ? undefined : next);
  const pick = (prefix) => lines.find((l) => l.startsWith(prefix));
  const out = [pick('a=ice-ufrag:'), pick('a=ice-pwd:'), lines[first], section.find((l) => l.startsWith('a=mid:'))];
  out.push(...section.filter((l) => l.startsWith('a=candidate:')), 'a=end-of-candidates');
  return out.filter(Boolean).join('\r\n') + '\r\n';
}

/** `answer` with the ICE credentials and candidates of `fragment` in place of its own. */
export function renewedAnswer(answer, fragment) {
  const f = fragment.split(/\r?\n/);
  const ufrag = f.find((l) => l.startsWith('a=ice-ufrag:'));
  const pwd = f.find((l) => l.startsWith('a=ice-pwd:'));
  if (!ufrag || !pwd) throw new WhepError(0, 'ICE restart answer without credentials');
  const lines = answer
    .split(/\r?\n/)
    .filter((l) => l && !l.startsWith('a=candidate:') && l !== 'a=end-of-candidates')
    .map((l) => (l.startsWith('a=ice-ufrag:') ? ufrag : l.startsWith('a=ice-pwd:') ? pwd : l));
  lines.push(...f.filter((l) => l.startsWith('a=candidate:')));
  return lines.join('\r\n') + '\r\n';
}

export class WhepSession {
  /**
   * POSTs an offer to `endpoint` (e.g. `/whep/door/raw`) and applies the answer.
   * `onStateChange(session)` is called whenever `session.state` may have changed.
   * Rejects with a WhepError (the peer connection is closed then), also when the
   * server has not answered within `timeoutMs` or `signal` aborts first. An
   * abort closes the session at once, synchronously: one the server has
   * already answered is DELETEd even from a `pagehide` handler, whose page
   * runs no more code after it returns. `onLabel(message)`: the session opens
   * the server's `labels` data channel (unordered, no retransmissions: a late
   * label is worth nothing) and hands on each message, parsed (README,
   * "Labels at their frame").
   */
  static async open(endpoint, { iceServers = [], onStateChange = () => {}, timeoutMs = 10000, signal, onLabel } = {}) {
    const pc = new RTCPeerConnection({ iceServers });
    const transceiver = pc.addTransceiver('video', { direction: 'recvonly' });
    const session = new WhepSession(pc, transceiver.receiver.track);
    if (onLabel) {
      const channel = pc.createDataChannel('labels', { ordered: false, maxRetransmits: 0 });
      channel.addEventListener('message', (e) => {
        let message;
        try {
          message = JSON.parse(e.data);
        } catch {
          return;
        }
        onLabel(message);
      });
      session.labelsChannel = channel;
    }
    const report = () => onStateChange(session);
    pc.addEventListener('connectionstatechange', report);
    pc.addEventListener('iceconnectionstatechange', report);
    const abort = () => session.close();
    signal?.addEventListener('abort', abort, { once: true });
    try {
      if (signal?.aborted) throw new WhepError(0, 'cancelled');
      await pc.setLocalDescription(await pc.createOffer());
      let res;
      try {
        session.postedAt = performance.now();
        const timeout = AbortSignal.timeout(timeoutMs);
        res = await fetch(endpoint, {
          method: 'POST',
          headers: { 'Content-Type': 'application/sdp', ...authHeaders() },
          body: pc.localDescription.sdp,
          // AbortSignal.any: Chromium 116, Firefox 124, Safari 17.4; older ones keep the timeout only.
          signal: signal && AbortSignal.any ? AbortSignal.any([timeout, signal]) : timeout,
        });
      } catch (e) {
        throw new WhepError(0, signal?.aborted ? 'cancelled' : `server unreachable (${e.message})`);
      }
      if (res.status !== 201) throw new WhepError(res.status, await describeFailure(res));
      const location = res.headers.get('Location');
      if (!location) throw new WhepError(res.status, 'answer without a Location header');
      session.location = new URL(location, new URL(endpoint, document.baseURI)).href;
      session.etag = res.headers.get('ETag');
      if (signal?.aborted) throw new WhepError(0, 'cancelled');
      await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
      if (session.closed) throw new WhepError(0, 'cancelled');
      return session;
    } catch (e) {
      session.close(); // also DELETEs a session the server created before it went wrong
      throw e instanceof WhepError ? e : new WhepError(0, e.message);
    } finally {
      signal?.removeEventListener('abort', abort);
    }
  }

  constructor(pc, track) {
    this.pc = pc;
    /** The remote video, ready to attach to a <video> (frames come once connected). */
    this.stream = new MediaStream([track]);
    /** Absolute URL of the session resource (for DELETE). */
    this.location = null;
    /** performance.now() when the offer was sent. */
    this.postedAt = null;
    /** The session resource's entity-tag (a restart renews it). */
    this.etag = null;
    /** ICE restarts completed over PATCH. */
    this.iceRestarts = 0;
    /** The `labels` data channel, when asked for. */
    this.labelsChannel = null;
    this.closed = false;
  }

  /**
   * Restarts ICE on the same session (a network change, a lost path): new
   * credentials in a PATCH with `If-Match: *`, the server's new ones and
   * candidates back. Keeps DTLS, the track and the session resource.
   * Rejects with a WhepError (the caller falls back to a new session).
   */
  async restartIce(timeoutMs = 5000) {
    if (this.closed || !this.location) throw new WhepError(0, 'no session to restart');
    const pc = this.pc;
    pc.restartIce();
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, 2000);
    let res;
    try {
      res = await fetch(this.location, {
        method: 'PATCH',
        headers: { 'Content-Type': SDP_FRAGMENT, 'If-Match': '*', ...authHeaders() },
        body: sdpFragment(pc.localDescription.sdp),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (e) {
      throw new WhepError(0, `server unreachable (${e.message})`);
    }
    if (res.status !== 200) throw new WhepError(res.status, await describeFailure(res));
    this.etag = res.headers.get('ETag') ?? this.etag;
    const fragment = await res.text();
    await pc.setRemoteDescription({ type: 'answer', sdp: renewedAnswer(pc.remoteDescription.sdp, fragment) });
    this.iceRestarts++;
  }

  /** `new | connecting | connected | disconnected | failed | closed`. */
  get state() {
    if (this.pc.connectionState) return this.pc.connectionState;
    // Firefox before 113 has no connectionState; the ICE state tells the same here.
    const ice = this.pc.iceConnectionState;
    return { checking: 'connecting', completed: 'connected' }[ice] ?? ice;
  }

  /** Ends the session: DELETE on the server (kept alive through page unload), close the peer. */
  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.location) {
      fetch(this.location, { method: 'DELETE', headers: authHeaders(), keepalive: true }).catch(() => {});
    }
    this.pc.close();
  }
}
