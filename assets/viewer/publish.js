// Publishing from this browser (WHIP, RFC 9726): the camera the browser
// gives (getUserMedia) goes to POST /whip/{name} as H.264 (the only codec
// offered, packetization-mode 1); the server makes it a camera like any
// other, so its tile appears with the next poll. Stop (or leaving the page)
// DELETEs the session. Publishing needs an admin token.

import { authHeaders } from './api.js';

/** Longest wait for ICE gathering before the offer goes out with what there is. */
const GATHER_MS = 2000;
const POST_TIMEOUT_MS = 10_000;

function gathered(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => pc.iceGatheringState === 'complete' && resolve();
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, timeoutMs);
  });
}

/** Why the server refused, from its `{"error": {code, message}}` body. */
async function refusal(res) {
  const body = await res.json().catch(() => null);
  if (res.status === 401 || res.status === 403) return 'publishing needs an admin token';
  return body?.error?.message ?? `HTTP ${res.status}`;
}

export class Publisher {
  /** @param {RTCIceServer[]} iceServers from /api/webrtc */
  constructor(iceServers) {
    this.iceServers = iceServers;
    this.pc = null;
    this.stream = null;
    /** The session's resource (for DELETE), once published. */
    this.resource = null;
    this.camera = null;
  }

  get publishing() {
    return this.resource != null;
  }

  /** Publishes this browser's camera as camera `name`; throws with the reason it could not. */
  async start(name) {
    if (!navigator.mediaDevices?.getUserMedia) throw new Error('this page cannot use a camera here (HTTPS or localhost only)');
    const h264 = RTCRtpSender.getCapabilities('video')?.codecs.filter(
      (c) => c.mimeType === 'video/H264' && /packetization-mode=1/.test(c.sdpFmtpLine ?? ''),
    );
    if (!h264?.length) throw new Error('this browser cannot send H.264');
    this.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    try {
      const pc = new RTCPeerConnection({ iceServers: this.iceServers });
      this.pc = pc;
      const [track] = this.stream.getVideoTracks();
      const transceiver = pc.addTransceiver(track, { direction: 'sendonly', streams: [this.stream] });
      transceiver.setCodecPreferences(h264);
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, GATHER_MS);
      const res = await fetch(`/whip/${encodeURIComponent(name)}`, {
        method: 'POST',
        headers: { ...authHeaders(), 'Content-Type': 'application/sdp' },
        body: pc.localDescription.sdp,
        signal: AbortSignal.timeout(POST_TIMEOUT_MS),
      });
      if (res.status !== 201) throw new Error(await refusal(res));
      const resource = new URL(res.headers.get('Location'), location.href).href;
      await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
      this.resource = resource;
      this.camera = name;
    } catch (e) {
      this.stop();
      throw e;
    }
  }

  /** Ends the session (DELETE, kept alive past a page unload) and releases the camera. */
  stop() {
    if (this.resource) {
      fetch(this.resource, { method: 'DELETE', headers: authHeaders(), keepalive: true }).catch(() => {});
    }
    this.pc?.close();
    this.stream?.getTracks().forEach((t) => t.stop());
    this.pc = this.stream = this.resource = this.camera = null;
  }
}
