// Publishing from the page in Debian's chromium (playwright-core), for
// tests/browser.rs: the browser's camera is a fake one playing a Y4M file
// made from a real photo (so its label is known); the page logs in with an
// admin token, "Publish my camera" sends it over WHIP as camera `webcam`,
// the page's own tile for that camera plays it in the labelled view (its
// labels drawn on its frames); then the
// button stops it and the camera goes.
//
//   node publish.mjs BASE_URL ADMIN_TOKEN Y4M_FILE ARTIFACT_DIR
//   stdout: one {"event":"published", ...} line, one {"event":"stopped", ...}
//   line, then exit 0; any failure: {"event":"error","error":...} and exit 1.

import { launch } from './chromium.mjs';

const [base, token, y4m, artifactDir] = process.argv.slice(2);
const CAMERA = 'webcam';
const emit = (event) => console.log(JSON.stringify(event));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(200);
  }
}

async function api(path) {
  const res = await fetch(base + path, { headers: { Authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(5000) });
  return res.json();
}

const browser = await launch({
  viewport: { width: 1280, height: 700 },
  extraArgs: ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream', `--use-file-for-fake-video-capture=${y4m}`],
});
const stop = setTimeout(() => {
  emit({ event: 'error', error: 'publish.mjs ran past 100 s' });
  process.exit(1);
}, 100_000);
try {
  const page = await browser.context.newPage();
  await page.goto(base + '/', { timeout: 20_000 });
  await page.fill('#token', token, { timeout: 10_000 });
  await page.click('#login button[type="submit"]');
  await page.waitForSelector('#login', { state: 'hidden', timeout: 10_000 });
  const t0 = Date.now();
  await page.fill('#publish input', CAMERA);
  await page.click('#publish button');
  const status = await waitFor('the publish status', 20_000, async () => {
    const text = (await page.textContent('.publish-status')) ?? '';
    if (text.startsWith('not published')) throw new Error(text);
    return text.startsWith('publishing as') ? text : null;
  });
  const camera = await waitFor('camera webcam streaming', 20_000, async () =>
    (await api(`/api/cameras/${CAMERA}`)).state === 'streaming' ? api(`/api/cameras/${CAMERA}`) : null,
  );
  const streamingMs = Date.now() - t0;
  // The page's own tile for the camera plays it in the labelled view, labels drawn on its frames.
  const tile = `.tile[data-camera="${CAMERA}"]`;
  await page.click(`${tile} [data-track-button="overlay"]`, { timeout: 10_000 });
  const drawn = await waitFor('a label drawn on the webcam tile', 30_000, () =>
    page.evaluate((c) => {
      const labels = window.infercastTiles.get(c)?.overlay.drawn.filter((d) => d.label) ?? [];
      return labels.length >= 10 ? labels.slice(-10).map((d) => d.label) : null;
    }, CAMERA),
  );
  const labels = (await api(`/api/labels/${CAMERA}?limit=5`)).map((l) => l.label);
  const publishers = await page.evaluate(() => {
    const v = document.querySelector('.tile[data-camera="webcam"] video');
    return { width: v?.videoWidth ?? 0, height: v?.videoHeight ?? 0 };
  });
  emit({ event: 'published', status, streaming_ms: streamingMs, codec: camera.codec, drawn, labels, video: publishers });
  await page.screenshot({ path: `${artifactDir}/publish.png` });
  // Stop: the session is deleted and the camera the POST made goes.
  await page.click('#publish button');
  await waitFor('camera webcam removed', 15_000, async () =>
    (await api('/api/cameras')).every((c) => c.name !== CAMERA),
  );
  emit({ event: 'stopped', button: await page.textContent('#publish button') });
  clearTimeout(stop);
  await browser.close();
} catch (e) {
  // What the page and the server show, to tell where it stopped.
  const page = browser.context.pages().at(-1);
  const tile = await page
    ?.evaluate((c) => {
      const t = window.infercastTiles?.get(c);
      const v = document.querySelector(`.tile[data-camera="${c}"] video`);
      return {
        tile: t ? t.element.dataset : null,
        drawn: t?.overlay.drawn.length ?? 0,
        video: v ? { width: v.videoWidth, height: v.videoHeight, time: v.currentTime } : null,
        stats: document.querySelector(`.tile[data-camera="${c}"] .stats`)?.textContent ?? null,
      };
    }, CAMERA)
    .catch((err) => String(err));
  const camera = await api(`/api/cameras/${CAMERA}`).catch((err) => String(err));
  const labels = await api(`/api/labels/${CAMERA}?limit=3`).catch((err) => String(err));
  emit({ event: 'error', error: String(e?.stack ?? e), tile, camera, labels });
  clearTimeout(stop);
  await browser.close().catch(() => {});
  process.exit(1);
}
