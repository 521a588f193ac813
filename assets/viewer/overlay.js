// Labels drawn at their frame: the labels of a WHEP session's `labels` data
// channel (each keyed to the 90 kHz RTP timestamp of the frame it was
// computed from), and a canvas over the raw video that shows, for every
// frame the browser presents, the latest label at or before that frame's
// RTP timestamp (`requestVideoFrameCallback` metadata `rtpTimestamp`).
// Where a browser gives no `rtpTimestamp`, the newest label is drawn and
// `exact` says so. Knows nothing about tiles or sessions.

/** Labels kept (≈ 10 s at 25 labels/s): older ones no frame still shown needs. */
const MAX_LABELS = 256;
/** Frames whose (rtpTimestamp, label drawn) are kept for inspection (`drawn`). */
const MAX_DRAWN = 1500;
/** Offsets kept for the server between two `takeOffsetSample` calls: a uniform sample of the frames drawn. */
const OFFSET_SAMPLE = 50;
const TWO_32 = 2 ** 32;

/**
 * RTP timestamps (mod 2³²) on one line: each value is placed within ±2³¹ of
 * the previous one, so the 2³² wrap (every 13 h at 90 kHz) does not reorder.
 */
export class Unwrapper {
  #last = null;

  unwrap(ts) {
    if (this.#last == null) {
      this.#last = ts;
      return ts;
    }
    const delta = (((ts - this.#last) % TWO_32) + TWO_32 + TWO_32 / 2) % TWO_32 - TWO_32 / 2;
    this.#last += delta;
    return this.#last;
  }
}

/** One session's labels by RTP timestamp. */
export class LabelTimeline {
  #unwrapper = new Unwrapper();
  /** `{at, label}` by `at` (unwrapped RTP timestamp), ascending. */
  #labels = [];

  /** A `labels` channel message `{rtp_timestamp, label, class_id, score, top5}`. */
  add(message) {
    if (!Number.isInteger(message?.rtp_timestamp) || typeof message.label !== 'string') return;
    const at = this.#unwrapper.unwrap(message.rtp_timestamp);
    let i = this.#labels.length;
    while (i > 0 && this.#labels[i - 1].at > at) i--;
    this.#labels.splice(i, 0, { at, label: message });
    if (this.#labels.length > MAX_LABELS) this.#labels.shift();
  }

  /** The latest label at or before RTP timestamp `rtpTimestamp`; null if none is that old. */
  at(rtpTimestamp) {
    const at = this.#unwrapper.unwrap(rtpTimestamp);
    for (let i = this.#labels.length - 1; i >= 0; i--) {
      if (this.#labels[i].at <= at) return this.#labels[i].label;
    }
    return null;
  }

  /** The label of the latest frame (whatever frame is shown). */
  newest() {
    return this.#labels.at(-1)?.label ?? null;
  }

  get size() {
    return this.#labels.length;
  }
}

/** Draws `label` (name, score and a score bar) at the bottom of a `w`×`h` canvas. */
function drawLabel(ctx, w, h, label) {
  ctx.clearRect(0, 0, w, h);
  if (!label) return;
  const size = Math.max(12, Math.round(h / 18));
  const pad = Math.round(size / 2);
  const text = `${label.label} ${Math.round(label.score * 100)}%`;
  ctx.font = `600 ${size}px system-ui, sans-serif`;
  const boxW = Math.min(w - 2 * pad, ctx.measureText(text).width + 2 * pad);
  const boxH = size + 2 * pad + Math.round(size / 3);
  const y = h - boxH - pad;
  ctx.fillStyle = 'rgb(0 0 0 / 0.6)';
  ctx.fillRect(pad, y, boxW, boxH);
  ctx.fillStyle = '#fff';
  ctx.textBaseline = 'top';
  ctx.fillText(text, 2 * pad, y + pad / 2, boxW - 2 * pad);
  ctx.fillStyle = '#4ade80';
  ctx.fillRect(2 * pad, y + pad / 2 + size + 2, Math.max(1, (boxW - 2 * pad) * label.score), Math.round(size / 4));
}

export class FrameOverlay {
  /** True while frames carry `rtpTimestamp` (labels at their frame); false: newest label drawn. */
  exact = null;
  /**
   * The last frames presented, oldest first: `{rtpTimestamp, label, offsetMs}`:
   * the label drawn (null: none) and how far the frame lies after the frame
   * that label was computed from (ms; the label-to-frame offset).
   */
  drawn = [];
  #video;
  #canvas;
  #timeline = null;
  #handle = null;
  #timer = null;
  /** A uniform sample (reservoir) of the offsets since the last `takeOffsetSample`. */
  #offsets = [];
  #offsetsSeen = 0;

  constructor(video, canvas) {
    this.#video = video;
    this.#canvas = canvas;
  }

  /** Draws `timeline`'s labels over the video from now on (replaces the previous timeline). */
  start(timeline) {
    this.stop();
    this.#timeline = timeline;
    this.drawn = [];
    const video = this.#video;
    if (typeof video.requestVideoFrameCallback === 'function') {
      const onFrame = (_now, metadata) => {
        this.#draw(metadata.rtpTimestamp);
        this.#handle = video.requestVideoFrameCallback(onFrame);
      };
      this.#handle = video.requestVideoFrameCallback(onFrame);
    } else {
      this.#timer = setInterval(() => this.#draw(undefined), 100);
    }
  }

  /**
   * The label-to-frame offsets (ms, 0.1 ms steps) of up to 50 frames drawn
   * since the last call, picked uniformly among them; empty if none.
   */
  takeOffsetSample() {
    const sample = this.#offsets;
    this.#offsets = [];
    this.#offsetsSeen = 0;
    return sample;
  }

  #recordOffset(offsetMs) {
    const v = Math.round(offsetMs * 10) / 10;
    this.#offsetsSeen++;
    if (this.#offsets.length < OFFSET_SAMPLE) this.#offsets.push(v);
    else {
      const j = Math.floor(Math.random() * this.#offsetsSeen);
      if (j < OFFSET_SAMPLE) this.#offsets[j] = v;
    }
  }

  stop() {
    if (this.#handle != null) this.#video.cancelVideoFrameCallback?.(this.#handle);
    clearInterval(this.#timer);
    this.#handle = null;
    this.#timer = null;
    this.#timeline = null;
    const ctx = this.#canvas.getContext('2d');
    ctx?.clearRect(0, 0, this.#canvas.width, this.#canvas.height);
  }

  #draw(rtpTimestamp) {
    const timeline = this.#timeline;
    if (!timeline) return;
    const exact = Number.isInteger(rtpTimestamp);
    this.exact = exact;
    const label = exact ? timeline.at(rtpTimestamp) : timeline.newest();
    const canvas = this.#canvas;
    const w = this.#video.videoWidth || canvas.width;
    const h = this.#video.videoHeight || canvas.height;
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    const ctx = canvas.getContext('2d');
    if (ctx) drawLabel(ctx, w, h, label);
    const offsetMs = exact && label ? (((rtpTimestamp - label.rtp_timestamp) % TWO_32) + TWO_32) % TWO_32 / 90 : null;
    this.drawn.push({ rtpTimestamp: exact ? rtpTimestamp : null, label: label?.label ?? null, offsetMs });
    if (offsetMs != null) this.#recordOffset(offsetMs);
    if (this.drawn.length > MAX_DRAWN) this.drawn.splice(0, this.drawn.length - MAX_DRAWN);
  }
}
