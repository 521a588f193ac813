// ICE-TCP in Debian's chromium (playwright-core), for tests/browser.rs: the
// test has blocked UDP to the server's port in its network namespace, so the
// page's viewer can reach the one-port SFU only over its ICE-TCP passive
// candidate (RFC 6544). The demo tile must play, its selected candidate pair
// on TCP.
//
//   node ice_tcp.mjs BASE_URL
//   stdout: one {"event":"ice_tcp", protocol, stats, first_frame_ms} line and
//   exit 0; any failure: {"event":"error","error":...} and exit 1.

import { launch } from './chromium.mjs';

const [base] = process.argv.slice(2);
const emit = (event) => console.log(JSON.stringify(event));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const browser = await launch();
const stop = setTimeout(() => {
  emit({ event: 'error', error: 'ice_tcp.mjs ran past 60 s' });
  process.exit(1);
}, 60_000);
try {
  const page = await browser.context.newPage();
  await page.goto(base + '/', { timeout: 20_000 });
  const tile = '.tile[data-camera="demo"]';
  const deadline = Date.now() + 30_000;
  let seen = null;
  for (;;) {
    seen = await page.evaluate((sel) => {
      const t = document.querySelector(sel);
      const v = t?.querySelector('video');
      return t
        ? { video: t.dataset.video, protocol: t.dataset.protocol ?? null, firstFrameMs: t.dataset.firstFrameMs ?? null,
            stats: t.querySelector('.stats')?.textContent ?? null, decoded: v?.getVideoPlaybackQuality?.().totalVideoFrames ?? 0 }
        : null;
    }, tile);
    if (seen?.video === 'playing' && seen.protocol && seen.decoded > 10) break;
    if (Date.now() > deadline) throw new Error(`the demo tile did not play within 30 s: ${JSON.stringify(seen)}`);
    await sleep(200);
  }
  emit({ event: 'ice_tcp', protocol: seen.protocol, stats: seen.stats, first_frame_ms: Number(seen.firstFrameMs), decoded: seen.decoded });
  clearTimeout(stop);
  await browser.close();
} catch (e) {
  emit({ event: 'error', error: String(e?.stack ?? e) });
  clearTimeout(stop);
  await browser.close().catch(() => {});
  process.exit(1);
}
