// WHEP client (RFC 9725): one receive-only video session with the server.
// Owns the RTCPeerConnection, the POST of the offer and the DELETE of the
// session resource. Non-trickle: the offer goes out at once, without waiting
// for candidates; the server answers with its own and learns ours from the
// ICE checks. Knows nothing about pages, tiles or retries.

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

export class WhepSession {
  /**
   * POSTs an offer to `endpoint` (e.g. `/whep/door/raw`) and applies the answer.
   * `onStateChange(session)` is called whenever `session.state` may have changed.
   * Rejects with a WhepError (the peer connection is closed then), also when the
   * server has not answered within `timeoutMs`.
   */
  static async open(endpoint, { iceServers = [], onStateChange = () => {}, timeoutMs = 10000 } = {}) {
    const pc = new RTCPeerConnection({ iceServers });
    const transceiver = pc.addTransceiver('video', { direction: 'recvonly' });
    const session = new WhepSession(pc, transceiver.receiver.track);
    const report = () => onStateChange(session);
    pc.addEventListener('connectionstatechange', report);
    pc.addEventListener('iceconnectionstatechange', report);
    try {
      await pc.setLocalDescription(await pc.createOffer());
      let res;
      try {
        session.postedAt = performance.now();
        res = await fetch(endpoint, {
          method: 'POST',
          headers: { 'Content-Type': 'application/sdp', ...authHeaders() },
          body: pc.localDescription.sdp,
          signal: AbortSignal.timeout(timeoutMs),
        });
      } catch (e) {
        throw new WhepError(0, `server unreachable (${e.message})`);
      }
      if (res.status !== 201) throw new WhepError(res.status, await describeFailure(res));
      const location = res.headers.get('Location');
      if (!location) throw new WhepError(res.status, 'answer without a Location header');
      session.location = new URL(location, new URL(endpoint, document.baseURI)).href;
      await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
      return session;
    } catch (e) {
      session.close(); // also DELETEs a session the server created before it went wrong
      throw e instanceof WhepError ? e : new WhepError(0, e.message);
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
    this.closed = false;
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
