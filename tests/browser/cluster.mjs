// The viewer page of one cluster node in Debian's chromium (playwright-core):
// every camera of the cluster plays, also those another node pulls (the tile
// posts its WHEP offer to that node's advertised URL), each tile names its
// node, and when a node dies the tiles of its cameras play again from their
// new node by themselves. Driven by tests/cluster.rs, which reads the JSON
// lines this prints and answers on stdin.
//
//   node cluster.mjs BASE_URL ARTIFACT_DIR
//   stdout: {"event":"playing","nodes":{cam:node}}; then reads the killed node's
//   id on stdin; stdout: {"event":"followed","nodes":{...},"ms":N}; exit 0.
//   Any failure: {"event":"error","error":...} and exit 1.

import { createInterface } from 'node:readline';
import { launch } from './chromium.mjs';

const [base, artifactDir] = process.argv.slice(2);
const emit = (event) => console.log(JSON.stringify(event));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Every tile: camera, node, player phase and decoded frames. */
const tiles = (page) =>
  page.$$eval('.tile', (all) =>
    all.map((t) => ({
      camera: t.dataset.camera,
      node: t.dataset.node ?? null,
      video: t.dataset.video,
      frames: t.querySelector('video').getVideoPlaybackQuality().totalVideoFrames,
    })),
  );

/** Waits (≤ timeoutMs) until `want(tiles)` holds twice 1 s apart with every frame count growing. */
async function until(page, what, timeoutMs, want) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  while (Date.now() < deadline) {
    const now = await tiles(page);
    if (want(now) && last && want(last)) {
      const grew = now.every((t) => t.frames > (last.find((l) => l.camera === t.camera)?.frames ?? Infinity));
      if (grew) return now;
    }
    last = want(now) ? now : null;
    await sleep(1000);
  }
  throw new Error(`timed out after ${timeoutMs} ms: ${what}: ${JSON.stringify(await tiles(page))}`);
}

const browser = await launch({ viewport: { width: 1280, height: 900 } });
const stop = setTimeout(() => {
  emit({ event: 'error', error: 'cluster.mjs ran past 150 s' });
  process.exit(1);
}, 150_000);
try {
  const page = await browser.context.newPage();
  await page.goto(base + '/', { timeout: 20_000 });
  const playing = (all) => all.length === 6 && all.every((t) => t.video === 'playing' && t.node);
  const first = await until(page, 'every tile playing with its node', 60_000, playing);
  const nodes = Object.fromEntries(first.map((t) => [t.camera, t.node]));
  await page.screenshot({ path: `${artifactDir}/cluster.png` });
  emit({ event: 'playing', nodes });
  const line = await Promise.race([lines.next(), sleep(60_000).then(() => null)]);
  if (!line || line.done) throw new Error('no killed node on stdin');
  const killed = line.value.trim();
  const t0 = Date.now();
  const moved = (all) => playing(all) && all.every((t) => t.node !== killed);
  const after = await until(page, `tiles of ${killed}'s cameras playing from another node`, 60_000, moved);
  emit({ event: 'followed', nodes: Object.fromEntries(after.map((t) => [t.camera, t.node])), ms: Date.now() - t0 });
  clearTimeout(stop);
  await browser.close();
  process.exit(0); // stdin stays open
} catch (e) {
  emit({ event: 'error', error: String(e?.stack ?? e) });
  await browser.close().catch(() => {});
  process.exit(1);
}
