// Per-second video figures from RTCPeerConnection.getStats(): frame rate,
// bitrate, round-trip time and jitter-buffer delay. Owns the arithmetic
// between two samples only; the caller decides when to sample.

/** The selected candidate pair: via the transport (Chromium), else `selected` (Firefox) or nominated. */
function selectedPair(report) {
  let transport = null;
  const pairs = [];
  report.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) transport = s;
    if (s.type === 'candidate-pair') pairs.push(s);
  });
  if (transport) return report.get(transport.selectedCandidatePairId) ?? null;
  return pairs.find((p) => p.selected) ?? pairs.find((p) => p.nominated && p.state === 'succeeded') ?? null;
}

function inboundVideo(report) {
  let found = null;
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && (s.kind ?? s.mediaType) === 'video') found = s;
  });
  return found;
}

export class StatsSampler {
  #prev = null;

  /**
   * Figures since the previous sample: `{fps, kbps, rttMs, jitterMs, framesDecoded,
   * protocol, serverPort}` (`protocol`: `udp` or `tcp`, the selected pair's local
   * candidate's; `serverPort`: its remote candidate's port, the server's), each
   * null when not known yet.
   */
  sample(report) {
    const rtp = inboundVideo(report);
    const pair = selectedPair(report);
    const now = {
      at: rtp?.timestamp ?? performance.now(),
      frames: rtp?.framesDecoded ?? 0,
      bytes: rtp?.bytesReceived ?? 0,
      jbDelay: rtp?.jitterBufferDelay ?? 0,
      jbCount: rtp?.jitterBufferEmittedCount ?? 0,
    };
    const prev = this.#prev;
    this.#prev = now;
    const seconds = prev ? (now.at - prev.at) / 1000 : 0;
    const d = (k) => (prev ? now[k] - prev[k] : 0);

    let fps = rtp?.framesPerSecond ?? null;
    if (fps == null && seconds > 0) fps = d('frames') / seconds;
    const kbps = seconds > 0 ? (d('bytes') * 8) / 1000 / seconds : null;
    // Delay of the frames emitted since the last sample; the running mean until then.
    let jitterMs = null;
    if (d('jbCount') > 0) jitterMs = (d('jbDelay') / d('jbCount')) * 1000;
    else if (!prev && now.jbCount > 0) jitterMs = (now.jbDelay / now.jbCount) * 1000;
    const rtt = pair?.currentRoundTripTime;
    const local = pair?.localCandidateId ? report.get(pair.localCandidateId) : null;
    const remote = pair?.remoteCandidateId ? report.get(pair.remoteCandidateId) : null;
    return {
      protocol: local?.protocol ?? null,
      serverPort: remote?.port ?? null,
      fps,
      kbps,
      rttMs: rtt == null ? null : rtt * 1000,
      jitterMs,
      framesDecoded: rtp ? now.frames : null,
    };
  }
}
