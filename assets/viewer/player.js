// Keeps one camera track playing in a <video>: opens WHEP sessions, swaps
// them on a track switch (new session first, then DELETE the old one),
// restarts ICE over PATCH when the connection is lost, reconnects with capped
// backoff when that fails, the connection fails, the POST fails or frames
// stop arriving, measures POST → first decoded frame, and samples the
// connection's stats once a second. The `overlay` track is the raw track
// with the session's `labels` data channel: its labels fill `labels`, one
// timeline per session (each session has RTP timestamps of its own).
// Knows nothing about the page layout.

import { WhepSession } from './whep.js';
import { StatsSampler } from './stats.js';
import { LabelTimeline } from './overlay.js';

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 5000;
/** No new frame for this long while the camera streams: reconnect. */
const STALL_MS = 4000;
/** A `disconnected` connection gets this long to recover (on its own or by an ICE restart). */
const DISCONNECTED_GRACE_MS = 2000;
const TICK_MS = 1000;

export class Player {
  /** `connecting | playing | retrying | stopped`. */
  phase = 'stopped';
  /** Why we are retrying, for people. */
  detail = '';
  /** The latest per-second figures (see StatsSampler). */
  stats = null;
  /** ms from the latest session's POST to its first decoded frame. */
  firstFrameMs = null;
  /** The current session's labels by RTP timestamp (`overlay` track only; else null). */
  labels = null;
  /** Sessions given up and re-opened so far. */
  retries = 0;

  #video;
  #endpointFor;
  #iceServers;
  #onChange;
  #track = null;
  #session = null;
  /** Bumped by every connect, retry and stop: a stale async step sees it moved and gives up. */
  #generation = 0;
  /** The POST in flight (null: none); aborting it closes what it opens: see WhepSession.open. */
  #pendingOpen = null;
  #restarting = false;
  #retryTimer = null;
  #graceTimer = null;
  #ticker = null;
  #backoffMs = BACKOFF_MIN_MS;
  #sampler = new StatsSampler();
  #lastFrames = 0;
  #lastProgressAt = 0;
  #cameraStreaming = true;

  /**
   * `endpointFor(track)` gives the WHEP URL; `onChange()` is called after any
   * change of phase, stats or first-frame time.
   */
  constructor(video, { endpointFor, iceServers = [], onChange = () => {} }) {
    this.#video = video;
    this.#endpointFor = endpointFor;
    this.#iceServers = iceServers;
    this.#onChange = onChange;
  }

  /** Plays `track` (`raw` or `annotated`), replacing what plays now. */
  play(track) {
    this.#track = track;
    this.#ticker ??= setInterval(() => this.#tick(), TICK_MS);
    this.#backoffMs = BACKOFF_MIN_MS;
    this.#connect();
  }

  /** Ends the session (DELETE) and every timer; `play` starts again. */
  stop() {
    this.#generation++;
    this.#cancelPending();
    clearInterval(this.#ticker);
    this.#ticker = null;
    this.#session?.close();
    this.#session = null;
    this.labels = null;
    this.#setPhase('stopped');
  }

  /** ICE restarts the current session has completed. */
  get iceRestarts() {
    return this.#session?.iceRestarts ?? 0;
  }

  /**
   * Restarts ICE on the current session (WHEP PATCH), keeping the session and
   * its picture; if the server refuses or cannot be reached, opens a new session.
   */
  async restartIce(reason = 'ICE restart') {
    const session = this.#session;
    if (!session || this.#restarting) return;
    this.#restarting = true;
    try {
      await session.restartIce();
    } catch (e) {
      if (session === this.#session) this.#retry(`${reason}: ICE restart failed (${e.message})`);
    } finally {
      this.#restarting = false;
      this.#onChange();
    }
  }

  /** Whether the camera itself streams: while it does not, missing frames are expected. */
  setCameraStreaming(streaming) {
    if (streaming && !this.#cameraStreaming) this.#lastProgressAt = performance.now();
    this.#cameraStreaming = streaming;
  }

  async #connect() {
    const generation = ++this.#generation;
    this.#cancelPending();
    this.#setPhase('connecting');
    const timeline = this.#track === 'overlay' ? new LabelTimeline() : null;
    const pending = new AbortController();
    this.#pendingOpen = pending;
    let session = null;
    let error = null;
    try {
      session = await WhepSession.open(this.#endpointFor(this.#track), {
        iceServers: this.#iceServers,
        onStateChange: (s) => s === this.#session && this.#onPeerState(s.state),
        signal: pending.signal,
        onLabel: timeline ? (m) => timeline.add(m) : undefined,
      });
    } catch (e) {
      error = e;
    }
    if (generation !== this.#generation) {
      session?.close(); // replaced or stopped meanwhile
      return;
    }
    this.#pendingOpen = null;
    if (error) {
      this.#retry(error.message);
      return;
    }
    const old = this.#session;
    this.#session = session;
    this.labels = timeline;
    this.#sampler = new StatsSampler();
    this.#lastFrames = 0;
    this.#lastProgressAt = performance.now();
    this.#video.srcObject = session.stream;
    this.#video.play().catch(() => {}); // muted autoplay; a refused play() is retried by autoplay
    old?.close();
    this.#awaitFirstFrame(generation, session.postedAt);
  }

  /** Records POST → first decoded frame, by requestVideoFrameCallback where there is one. */
  #awaitFirstFrame(generation, postedAt) {
    const video = this.#video;
    let seen = false;
    const onFrame = () => {
      if (seen || generation !== this.#generation) return;
      seen = true;
      video.removeEventListener('loadeddata', onFrame);
      video.removeEventListener('playing', onFrame);
      this.firstFrameMs = Math.round(performance.now() - postedAt);
      this.#backoffMs = BACKOFF_MIN_MS;
      this.#setPhase('playing');
    };
    if (typeof video.requestVideoFrameCallback === 'function') {
      video.requestVideoFrameCallback(onFrame);
    } else {
      video.addEventListener('loadeddata', onFrame);
      video.addEventListener('playing', onFrame);
    }
  }

  #onPeerState(state) {
    if (state === 'failed') {
      this.#retry('connection failed');
    } else if (state === 'disconnected') {
      clearTimeout(this.#graceTimer);
      this.restartIce('connection lost');
      this.#graceTimer = setTimeout(() => {
        if (this.#session?.state === 'disconnected') this.#retry('connection lost');
      }, DISCONNECTED_GRACE_MS);
    } else if (state === 'connected') {
      clearTimeout(this.#graceTimer);
    }
  }

  /** Drops the session and opens a new one after the backoff (0.5 s, doubling to 5 s). */
  #retry(reason) {
    this.#generation++;
    this.#cancelPending();
    this.#session?.close();
    this.#session = null;
    const delayMs = this.#backoffMs;
    this.#backoffMs = Math.min(delayMs * 2, BACKOFF_MAX_MS);
    this.retries++;
    this.#setPhase('retrying', `${reason}; retrying in ${(delayMs / 1000).toFixed(1)} s`);
    this.#retryTimer = setTimeout(() => this.#connect(), delayMs);
  }

  /** Once a second: stats, and the watchdog for frames that stopped coming. */
  async #tick() {
    const session = this.#session;
    if (!session) return;
    let report;
    try {
      report = await session.pc.getStats();
    } catch {
      return; // closed meanwhile
    }
    if (session !== this.#session) return;
    this.stats = this.#sampler.sample(report);
    const frames = this.stats.framesDecoded ?? this.#video.getVideoPlaybackQuality?.().totalVideoFrames ?? 0;
    const now = performance.now();
    if (frames > this.#lastFrames) {
      this.#lastFrames = frames;
      this.#lastProgressAt = now;
    } else if (this.#cameraStreaming && this.#pendingOpen == null && now - this.#lastProgressAt > STALL_MS) {
      this.#retry(`no video for ${STALL_MS / 1000} s`);
      return;
    }
    this.#onChange();
  }

  #setPhase(phase, detail = '') {
    this.phase = phase;
    this.detail = detail;
    if (phase !== 'playing') this.stats = null;
    this.#onChange();
  }

  /** Forgets the pending retry, grace timer and POST (whose result will be dropped). */
  #cancelPending() {
    this.#pendingOpen?.abort();
    this.#pendingOpen = null;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#graceTimer);
  }
}
