// Labels drawn at their frame, in Debian's chromium (playwright-core), for
// tests/browser.rs: the `scenes` camera plays three photos in turn, each with
// a red / green / blue block in its bottom-left corner. The tile plays the
// labelled view (raw video + the `labels` data channel); for every frame the
// browser presents, a requestVideoFrameCallback of this script reads the
// frame's rtpTimestamp and its corner colour (its scene), and the page's
// overlay records the label it drew on that frame (tile.overlay.drawn). Each
// frame's drawn label must be its scene's class, except on the frames within
// one classification interval after a scene change (the nominal interval, or
// longer when the classifier fell behind: up to three intervals, while no
// label made from a frame of the new scene exists yet). The video is held
// 600 ms in the browser's jitter buffer (as on a jittery network), so labels
// come well before their frames: a page drawing the newest label fails.
// Then the tile plays the burned-in track (the server's annotated encode) for
// BURNED_MS, and the script records each frame's scene and the label box's
// text as a bitmask, which tests/browser.rs reads against the server's own
// renderings of each label.
//
//   node overlay.mjs BASE_URL ARTIFACT_DIR
//   env SCENES: JSON [[class names of scene 0], [scene 1], [scene 2]]
//   env INTERVAL_90K: the classification interval, 90 kHz ticks
//   env BURNED_CROP: JSON [x, y, w, h], the burned-in label's text line
//   stdout: one {"event":"overlay", ...figures} line, then one
//   {"event":"burned", crop, frames: [{rtpTimestamp, width, height, scene,
//   mask}]} line (the burned-in track's frames), then exit 0;
//   any failure: {"event":"error","error":...} and exit 1.

import { launch } from './chromium.mjs';

const [base, artifactDir] = process.argv.slice(2);
const scenes = JSON.parse(process.env.SCENES ?? '[]');
const interval90k = Number(process.env.INTERVAL_90K ?? 18000);
// The burned-in label's text line, [x, y, w, h] px of the frame (tests/browser.rs).
const crop = JSON.parse(process.env.BURNED_CROP ?? '[6, 6, 320, 33]');
const CAMERA = 'scenes';
const WATCH_MS = 10_000;
const BURNED_MS = 8_000;
const JITTER_MS = 600;
const emit = (event) => console.log(JSON.stringify(event));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

async function metric(name) {
  const text = await (await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  const line = text.split('\n').find((l) => l.startsWith(name + ' ') || l.startsWith(name + '{'));
  return line ? Number(line.split(' ').pop()) : 0;
}

/** In the page: records each presented frame's rtpTimestamp and scene (corner colour; -1 unknown). */
function recordTruth(camera) {
  const video = document.querySelector(`.tile[data-camera="${camera}"] video`);
  const canvas = document.createElement('canvas');
  canvas.width = 16;
  canvas.height = 16;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  window.__truth = [];
  const onFrame = (_now, metadata) => {
    window.__truth.push({ rtpTimestamp: metadata.rtpTimestamp ?? null, scene: window.__sceneOf(video, ctx) });
    if (window.__truth.length > 2000) window.__truth.shift();
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

/** In the page: the scene of the frame `video` shows (0, 1, 2 by its corner block's colour; -1 unknown). */
function installSceneOf() {
  window.__sceneOf = (video, ctx) => {
    const [w, h] = [video.videoWidth, video.videoHeight];
    // The block is 64×64 at the bottom left of 640×480: sample its middle 32×32, scaled to 16×16.
    ctx.drawImage(video, (16 * w) / 640, (432 * h) / 480, (32 * w) / 640, (32 * h) / 480, 0, 0, 16, 16);
    const px = ctx.getImageData(0, 0, 16, 16).data;
    const mean = [0, 1, 2].map((c) => {
      let sum = 0;
      for (let i = c; i < px.length; i += 4) sum += px[i];
      return sum / (px.length / 4);
    });
    const top = mean.indexOf(Math.max(...mean));
    return mean[top] > 150 && mean.every((m, i) => i === top || m < 100) ? top : -1;
  };
}

/**
 * In the page: records each presented frame of the burned-in track: its
 * rtpTimestamp, scene and the label box's text as a bitmask (luma ≥ 160 of
 * 255, row-major over `crop` = [x, y, w, h], LSB first, base64), for
 * tests/browser.rs to read against the server's own label renderings.
 */
function recordBurned([camera, crop]) {
  const video = document.querySelector(`.tile[data-camera="${camera}"] video`);
  const scene = document.createElement('canvas');
  scene.width = 16;
  scene.height = 16;
  const sceneCtx = scene.getContext('2d', { willReadFrequently: true });
  const full = document.createElement('canvas');
  const ctx = full.getContext('2d', { willReadFrequently: true });
  const [cx, cy, cw, ch] = crop;
  window.__burned = [];
  const onFrame = (_now, metadata) => {
    if (window.__burned.length < 600) {
      [full.width, full.height] = [video.videoWidth, video.videoHeight];
      ctx.drawImage(video, 0, 0);
      const px = ctx.getImageData(cx, cy, cw, ch).data;
      const bits = new Uint8Array(Math.ceil((cw * ch) / 8));
      for (let i = 0; i < cw * ch; i++) {
        const luma = 0.299 * px[4 * i] + 0.587 * px[4 * i + 1] + 0.114 * px[4 * i + 2];
        if (luma >= 160) bits[i >> 3] |= 1 << (i & 7);
      }
      window.__burned.push({
        rtpTimestamp: metadata.rtpTimestamp ?? null,
        width: video.videoWidth,
        height: video.videoHeight,
        scene: window.__sceneOf(video, sceneCtx),
        mask: btoa(String.fromCharCode(...bits)),
      });
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

const browser = await launch({ viewport: { width: 1280, height: 900 } });
const stop = setTimeout(() => {
  emit({ event: 'error', error: 'overlay.mjs ran past 150 s' });
  process.exit(1);
}, 150_000);
try {
  const page = await browser.context.newPage();
  // A viewer on a jittery network: the browser holds the video JITTER_MS in
  // its jitter buffer (RTCRtpReceiver.jitterBufferTarget), so labels arrive
  // well before their frames are shown. Drawing the newest label would then
  // show each scene's label on the previous scene's last frames; drawing by
  // rtpTimestamp must not.
  await page.addInitScript((jitterMs) => {
    const apply = RTCPeerConnection.prototype.setRemoteDescription;
    RTCPeerConnection.prototype.setRemoteDescription = async function (...args) {
      const r = await apply.apply(this, args);
      for (const receiver of this.getReceivers()) receiver.jitterBufferTarget = jitterMs;
      return r;
    };
  }, JITTER_MS);
  await page.addInitScript(installSceneOf);
  page.on('console', (m) => m.type() === 'error' && console.error(`[page ${m.type()}] ${m.text()}`));
  await page.goto(base + '/', { timeout: 20_000 });
  const tile = `.tile[data-camera="${CAMERA}"]`;
  await page.waitForSelector(tile, { timeout: 15_000 });
  await page.click(`${tile} [data-track-button="overlay"]`, { timeout: 5000 });
  await waitFor('the labelled view playing', 20_000, () =>
    page.$eval(tile, (t) => t.dataset.track === 'overlay' && t.dataset.video === 'playing'),
  );
  // Labels drawn: the overlay has drawn a label on some frame.
  await waitFor('a label drawn on a frame', 10_000, () =>
    page.evaluate((c) => window.infercastTiles.get(c).overlay.drawn.some((d) => d.label), CAMERA),
  );
  const encodedBefore = await metric(`infercast_frames_encoded_total{camera="${CAMERA}"}`);
  await page.evaluate(recordTruth, CAMERA);
  await sleep(WATCH_MS);
  const { truth, drawn, exact, stats } = await page.evaluate((c) => {
    const t = window.infercastTiles.get(c);
    return {
      truth: window.__truth,
      drawn: t.overlay.drawn,
      exact: t.overlay.exact,
      stats: document.querySelector(`.tile[data-camera="${c}"] .stats`).textContent,
    };
  }, CAMERA);
  const encodedAfter = await metric(`infercast_frames_encoded_total{camera="${CAMERA}"}`);
  // The camera's room lists the session with the labels its data channel carried.
  const viewers = await (await fetch(`${base}/api/cameras/${CAMERA}/viewers`, { signal: AbortSignal.timeout(5000) })).json();
  await page.screenshot({ path: `${artifactDir}/overlay.png` });

  if (exact !== true) throw new Error(`frames carry no rtpTimestamp (exact ${exact}); stats: ${stats}`);
  if (!/labels at their frame/.test(stats)) throw new Error(`stats line: ${stats}`);
  // Join: each frame the script saw with the label the overlay drew on it
  // (and how far, ms, the frame lies after the frame that label was made from).
  const drawnAt = new Map(drawn.filter((d) => d.rtpTimestamp != null).map((d) => [d.rtpTimestamp, d.label]));
  const offsetAt = new Map(drawn.filter((d) => d.rtpTimestamp != null).map((d) => [d.rtpTimestamp, d.offsetMs]));
  const frames = truth.filter((f) => f.rtpTimestamp != null && drawnAt.has(f.rtpTimestamp));
  if (frames.length < 150) throw new Error(`only ${frames.length} frames seen in ${WATCH_MS} ms`);
  // Scene changes, by RTP timestamp (unwrapped relative to the first frame).
  const rel = (ts) => ((ts - frames[0].rtpTimestamp) % 2 ** 32 + 2 ** 32) % 2 ** 32;
  const changes = [];
  for (let i = 1; i < frames.length; i++) {
    if (frames[i].scene >= 0 && frames[i - 1].scene >= 0 && frames[i].scene !== frames[i - 1].scene) {
      changes.push(rel(frames[i].rtpTimestamp));
    }
  }
  if (changes.length < 3) throw new Error(`only ${changes.length} scene changes in ${WATCH_MS} ms`);
  // The frames labels were made from (relative RTP time), as the drawn frames show them.
  const sourceOf = (f) => {
    const o = offsetAt.get(f.rtpTimestamp);
    return o == null ? null : rel(f.rtpTimestamp) - Math.round(o * 90);
  };
  const sources = [...new Set(frames.map(sourceOf).filter((s) => s != null))].sort((a, b) => a - b);
  const counts = { checked: 0, excluded: 0, late_classification: 0, unknown_scene: 0, before_first_label: 0, wrong: 0 };
  const wrong = [];
  let labelled = false;
  for (const f of frames) {
    const label = drawnAt.get(f.rtpTimestamp);
    labelled ||= label != null;
    if (f.scene < 0) {
      counts.unknown_scene++;
      continue;
    }
    if (!labelled) {
      counts.before_first_label++;
      continue;
    }
    const t = rel(f.rtpTimestamp);
    if (changes.some((c) => t >= c && t < c + interval90k)) {
      counts.excluded++;
      continue;
    }
    // Past one nominal interval, but no frame of the new scene classified yet
    // (the classifier fell behind under load: the interval ran long): the
    // overlay rightly still draws the newest label it has, made before the
    // change, as long as no newer label was there to draw; at most 3 intervals.
    const change = changes.filter((c) => c <= t).at(-1);
    const source = sourceOf(f);
    if (change != null && source != null && source < change && t < change + 3 * interval90k &&
        !sources.some((s) => s > source && s <= t)) {
      counts.late_classification++;
      continue;
    }
    counts.checked++;
    if (!scenes[f.scene]?.includes(label)) {
      counts.wrong++;
      if (wrong.length < 10) wrong.push({ rtp: f.rtpTimestamp, scene: f.scene, drawn: label });
    }
  }
  // Label-to-frame offset: how far each frame lies after the frame its label was made from.
  const offsets = drawn.map((d) => d.offsetMs).filter((o) => o != null).sort((a, b) => a - b);
  const q = (p) => (offsets.length ? Math.round(offsets[Math.min(offsets.length - 1, Math.floor(p * offsets.length))]) : null);
  const figures = {
    frames: frames.length,
    label_offset_ms_p50: q(0.5),
    label_offset_ms_p95: q(0.95),
    scene_changes: changes.length,
    ...counts,
    encoded_frames_during: encodedAfter - encodedBefore,
    session_labels_sent: viewers.map((v) => v.labels_sent),
    stats,
  };
  if (counts.checked < 100) throw new Error(`only ${counts.checked} frames checked: ${JSON.stringify(figures)}`);
  if (counts.wrong > 0) throw new Error(`wrong label on ${counts.wrong} frames: ${JSON.stringify({ figures, wrong })}`);
  // At 5 labels/s a frame is at most ~200 ms (one interval, plus one frame) after its label's frame.
  if (!(figures.label_offset_ms_p95 <= 250)) throw new Error(`label-to-frame offset: ${JSON.stringify(figures)}`);
  if (counts.unknown_scene > frames.length / 10) throw new Error(`scene unreadable: ${JSON.stringify(figures)}`);
  // The page reports a sample of its offsets to the server every 10 s (the production metric).
  const offsetCount = `infercast_viewer_label_offset_seconds_count{camera="${CAMERA}"}`;
  figures.offsets_reported = await waitFor('the page posting its label-to-frame offsets', 15_000, () => metric(offsetCount));
  emit({ event: 'overlay', ...figures });

  // The burned-in track: the server's annotated encode of the same camera.
  await page.click(`${tile} [data-track-button="annotated"]`, { timeout: 5000 });
  await waitFor('the burned-in view playing', 20_000, () =>
    page.$eval(tile, (t) => t.dataset.track === 'annotated' && t.dataset.video === 'playing'),
  );
  // Past the switch: frames already in the jitter buffer, and the encoder's first IDR.
  await sleep(JITTER_MS + 1000);
  await page.evaluate(recordBurned, [CAMERA, crop]);
  await sleep(BURNED_MS);
  const burned = await page.evaluate(() => window.__burned);
  emit({ event: 'burned', crop, frames: burned });
  clearTimeout(stop);
  await browser.close();
  process.exit(0);
} catch (e) {
  emit({ event: 'error', error: String(e?.stack ?? e) });
  await browser.close().catch(() => {});
  process.exit(1);
}
