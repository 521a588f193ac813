// One camera's tile: name and state badge, the video with its track switch
// (raw; labelled = raw + labels drawn at their frame from the session's
// `labels` data channel; burned-in = the server's annotated track), the live
// label over the picture, a notice when the camera is not streaming, and the
// per-second stats line. Owns its DOM, its Player and its FrameOverlay; gets
// camera states and labels (SSE) from app.js.
//
// Test hooks: <section class="tile" data-camera data-track data-state
// data-video (player phase) data-retries data-ice-restarts data-first-frame-ms
// (WHEP POST → first decoded frame) data-node (cluster mode: the node serving
// it) data-protocol (`udp`, or `tcp` over ICE-TCP) data-server-port (the
// selected candidate pair's server port)>, which restarts ICE on an `infercast:restart-ice` event,
// buttons [data-track-button] (`raw`, `overlay`, `annotated`),
// .label[data-label][data-score], .viewers[data-viewers] (viewer sessions of
// the camera, both tracks), and `tile.overlay.drawn` (the last frames of the
// labelled view: `{rtpTimestamp, label}`, see overlay.js) via
// `window.infercastTiles` (app.js). The labelled view posts a sample of its
// label-to-frame offsets every 10 s (`/api/cameras/{name}/label-offsets`).
// Clicking a tile puts it in focus (its room's chat opens: app.js).
//
// Cluster mode: the tile names the node that pulls the camera, sends its
// WHEP offer straight to that node's advertised URL, and reconnects there
// when the camera moves to another node.

import { postJson } from './api.js';
import { displayName } from './chat.js';
import { FrameOverlay } from './overlay.js';
import { Player } from './player.js';

/** What a tile can play: the WHEP track each uses, and the button's text. */
const TRACKS = ['raw', 'overlay', 'annotated'];
const TRACK_NAMES = { raw: 'raw', overlay: 'labelled', annotated: 'burned-in' };
const TRACK_TITLES = {
  raw: "the camera's own stream",
  overlay: "the camera's own stream, labels drawn by this page on the frame each was computed from",
  annotated: 'labels burned into the picture by the server (re-encoded)',
};
/** How often the labelled view posts its sample of label-to-frame offsets (`infercast_viewer_label_offset_seconds`). */
const OFFSET_REPORT_MS = 10_000;
const whepTrack = (t) => (t === 'overlay' ? 'raw' : t);

const NOTICES = {
  connecting: 'Connecting to the camera…',
  reconnecting: 'Camera unreachable, reconnecting…',
  failed: 'Camera failed',
  stopped: 'Camera stopped',
  standby: 'Camera moving to another node…',
};

/** `el('div', {class: 'x'}, child, 'text')`: attributes are set as attributes, text stays text. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

const fmt = (v, digits, unit) => (v == null || !Number.isFinite(v) ? '–' : `${v.toFixed(digits)} ${unit}`);

/** `since 14:02:31 (5 s)` for an RFC 3339 time. */
function since(iso) {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return '';
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  const ago = s < 90 ? `${s} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
  return `since ${new Date(t).toLocaleTimeString()} (${ago})`;
}

/**
 * The track a tile plays unless the user picks one: the camera's own stream,
 * except for H.265 or B-frame cameras, whose raw stream WebRTC players are not
 * promised to decode: those get the annotated track (H.264 without B-frames).
 */
function defaultTrack(camera) {
  const rawPlayable = !camera.bframes && (camera.codec == null || camera.codec === 'H.264');
  return rawPlayable ? 'raw' : 'annotated';
}

export class Tile {
  #camera;
  #label = null;
  #offline = false;
  #player;
  #parts;
  #trackChosen = false;
  /** The label timeline the overlay draws (the player's current session's). */
  #overlayLabels = null;
  /** Posts the overlay's offsets while the labelled view plays. */
  #offsetTimer = null;

  #thisNode;

  /**
   * `thisNode`: the id of the cluster node serving this page (null outside
   * cluster mode); `onFocus(tile)`: the user clicked the tile.
   */
  constructor(camera, { iceServers, track, thisNode = null, onFocus = () => {} }) {
    this.#camera = camera;
    this.#thisNode = thisNode;
    const video = el('video', { autoplay: '', muted: '', playsinline: '' });
    video.muted = true; // the attribute alone does not mute a MediaStream in every browser
    const buttons = TRACKS.map((t) =>
      el('button', { type: 'button', 'data-track-button': t, title: TRACK_TITLES[t] }, TRACK_NAMES[t]),
    );
    const canvas = el('canvas', { class: 'overlay', 'aria-hidden': 'true' });
    this.overlay = new FrameOverlay(video, canvas);
    this.#parts = {
      video,
      canvas,
      buttons,
      badge: el('span', { class: 'badge' }),
      node: el('span', { class: 'node', hidden: '' }),
      viewers: el('span', { class: 'viewers', title: 'viewer sessions' }),
      label: el('div', { class: 'label' }, el('span', { class: 'label-name' }), el('span', { class: 'label-score' })),
      notice: el(
        'div',
        { class: 'notice', hidden: '' },
        el('strong'),
        el('span', { class: 'notice-detail' }),
        el('span', { class: 'notice-since' }),
      ),
      stats: el('footer', { class: 'stats' }),
    };
    this.element = el(
      'section',
      { class: 'tile', 'data-camera': camera.name },
      el(
        'header',
        {},
        el('h2', {}, camera.name),
        this.#parts.badge,
        this.#parts.node,
        this.#parts.viewers,
        el('div', { class: 'switch', role: 'group', 'aria-label': 'track' }, ...buttons),
      ),
      el('div', { class: 'screen' }, video, canvas, this.#parts.label, this.#parts.notice),
      this.#parts.stats,
    );
    this.element.addEventListener('click', () => onFocus(this));
    for (const b of buttons) {
      b.addEventListener('click', () => {
        this.#trackChosen = true;
        this.setTrack(b.dataset.trackButton);
      });
    }

    const endpointFor = (t) => {
      const name = displayName();
      const query = name ? `?name=${encodeURIComponent(name)}` : '';
      return `${this.base}/whep/${encodeURIComponent(camera.name)}/${whepTrack(t)}${query}`;
    };
    this.#player = new Player(video, { endpointFor, iceServers, onChange: () => this.#renderVideo() });
    this.element.addEventListener('infercast:restart-ice', () => this.#player.restartIce('requested'));
    this.update(camera);
    this.setTrack(track ?? defaultTrack(camera));
  }

  /** The camera's name. */
  get name() {
    return this.#camera.name;
  }

  /** Where the camera's WHEP and room endpoints are: in cluster mode the node that pulls it, unless it is this page's. */
  get base() {
    const { node, node_url: url } = this.#camera;
    return url && node !== this.#thisNode ? url : '';
  }

  /** Switches the video to `track` (`raw`, `overlay` or `annotated`) without reloading anything. */
  setTrack(track) {
    if (!TRACKS.includes(track) || (track === this.element.dataset.track && this.#player.phase !== 'stopped')) return;
    this.element.dataset.track = track;
    for (const b of this.#parts.buttons) b.setAttribute('aria-pressed', String(b.dataset.trackButton === track));
    this.#player.play(track);
  }

  /** Re-opens the video after `stop` (e.g. a page restored from the back/forward cache). */
  resume() {
    this.#player.play(this.element.dataset.track);
  }

  /** Ends the video session (DELETE on the server). */
  stop() {
    this.#player.stop();
  }

  /** A fresh `/api/cameras` entry for this camera. */
  update(camera) {
    const movedFrom = this.#camera.node;
    this.#camera = camera;
    this.#offline = false;
    this.#renderNode(camera);
    const viewers = Object.values(camera.viewers ?? {}).reduce((a, b) => a + b, 0);
    this.#parts.viewers.dataset.viewers = String(viewers);
    this.#parts.viewers.textContent = `${viewers} watching`;
    // The camera moved to another node: follow it there (the old node ends its sessions anyway).
    if (camera.node && movedFrom && camera.node !== movedFrom && this.#player.phase !== 'stopped') {
      this.#player.play(this.element.dataset.track);
    }
    // `degraded`: pictures still arrive, fewer than the stream carries (the badge says why).
    const streaming = camera.state === 'streaming' || camera.state === 'degraded';
    this.element.dataset.state = camera.state;
    this.#parts.badge.textContent = camera.state;
    this.#parts.badge.dataset.state = camera.state;
    this.#parts.badge.title = camera.state === 'degraded' ? (camera.last_error ?? '') : '';
    const rawPlayable = defaultTrack(camera) === 'raw';
    for (const b of this.#parts.buttons.filter((b) => whepTrack(b.dataset.trackButton) === 'raw')) {
      b.disabled = camera.codec != null && camera.codec !== 'H.264';
      b.title = rawPlayable
        ? TRACK_TITLES[b.dataset.trackButton]
        : 'the camera sends B-frames or H.265: browsers may not play its own stream';
    }
    if (!rawPlayable && !this.#trackChosen && whepTrack(this.element.dataset.track) === 'raw') {
      this.setTrack('annotated');
    }
    if (camera.width && camera.height) this.#parts.video.style.aspectRatio = `${camera.width} / ${camera.height}`;
    this.#player.setCameraStreaming(streaming);
    this.#renderNotice();
    this.#parts.label.classList.toggle('stale', !streaming);
  }

  #renderNode(camera) {
    const node = this.#parts.node;
    const clustered = 'node' in camera;
    node.hidden = !clustered;
    node.textContent = clustered ? `on ${camera.node ?? '…'}` : '';
    node.title = camera.node_url ?? '';
    if (clustered && camera.node) this.element.dataset.node = camera.node;
    else delete this.element.dataset.node;
  }

  /** The API did not answer: say so over the picture until the next `update`. */
  setOffline() {
    this.#offline = true;
    this.#player.setCameraStreaming(false);
    this.#renderNotice();
  }

  /** A label for this camera (from the SSE stream or `/api/labels`); older ones are ignored. */
  showLabel(label) {
    if (this.#label && Date.parse(label.captured_at) < Date.parse(this.#label.captured_at)) return;
    this.#label = label;
    const { label: node } = this.#parts;
    node.dataset.label = label.label;
    node.dataset.score = String(label.score);
    node.querySelector('.label-name').textContent = label.label;
    node.querySelector('.label-score').textContent = `${Math.round(label.score * 100)}%`;
    node.title = (label.top5 ?? []).map((c) => `${c.label} ${(c.score * 100).toFixed(1)}%`).join('\n');
  }

  #renderNotice() {
    const { notice } = this.#parts;
    const camera = this.#camera;
    let title = null;
    if (this.#offline) {
      title = 'Server unreachable, retrying…';
    } else if (camera.state !== 'streaming' && camera.state !== 'degraded') {
      title = NOTICES[camera.state] ?? `Camera ${camera.state}`;
    }
    const cameraDown = title != null && !this.#offline;
    notice.hidden = title == null;
    notice.querySelector('strong').textContent = title ?? '';
    // The API redacts credentials from every URL it reports, errors included.
    notice.querySelector('.notice-detail').textContent = (cameraDown && camera.last_error) || '';
    notice.querySelector('.notice-since').textContent = cameraDown ? since(camera.state_since) : '';
  }

  /** Sends the server the label-to-frame offsets measured since the last report (a failed POST loses only them). */
  #reportOffsets() {
    const offsets = this.overlay.takeOffsetSample();
    if (offsets.length === 0) return;
    postJson(`${this.base}/api/cameras/${encodeURIComponent(this.name)}/label-offsets`, { offsets_ms: offsets });
  }

  #renderVideo() {
    const p = this.#player;
    if (p.labels !== this.#overlayLabels) {
      this.#overlayLabels = p.labels;
      this.#reportOffsets();
      clearInterval(this.#offsetTimer);
      this.#offsetTimer = null;
      if (p.labels) {
        this.overlay.start(p.labels);
        this.#offsetTimer = setInterval(() => this.#reportOffsets(), OFFSET_REPORT_MS);
      } else this.overlay.stop();
    }
    this.element.dataset.video = p.phase;
    // Until the data channel brings labels, the SSE label stays shown (style.css).
    this.element.dataset.overlayLabels = String(p.labels?.size ?? 0);
    this.element.dataset.retries = String(p.retries);
    this.element.dataset.iceRestarts = String(p.iceRestarts);
    if (p.firstFrameMs != null) this.element.dataset.firstFrameMs = String(p.firstFrameMs);
    const s = p.stats;
    let text;
    if (p.phase === 'playing' && s) {
      text = [
        fmt(s.fps, 0, 'fps'),
        fmt(s.kbps, 0, 'kbit/s'),
        `rtt ${fmt(s.rttMs, 0, 'ms')}`,
        `jitter buf ${fmt(s.jitterMs, 0, 'ms')}`,
      ];
      // UDP blocked on the viewer's network: the video came over ICE-TCP.
      if (s.protocol === 'tcp') text.push('over TCP');
      if (s.protocol) this.element.dataset.protocol = s.protocol;
      if (s.serverPort != null) this.element.dataset.serverPort = String(s.serverPort);
      if (p.labels) {
        // Without rtpTimestamp (older browsers) the newest label is drawn, whatever its frame.
        if (p.labels.size === 0) text.push('no labels on the data channel yet');
        else if (this.overlay.exact === false) text.push('labels: newest (no frame timestamps)');
        else text.push('labels at their frame');
      }
      text = text.join(' · ');
    } else {
      text = { connecting: 'connecting video…', retrying: p.detail }[p.phase] ?? p.phase;
    }
    this.#parts.stats.textContent = text;
  }
}
