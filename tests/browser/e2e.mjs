// The viewer page in Debian's chromium, driven by playwright-core, for
// tests/browser.rs. Usage: node e2e.mjs BASE_URL ARTIFACT_DIR
//
// Talks to the Rust test by lines: on stdout one JSON object per line
// ({"event": "check", "name", "ok", ...}, {"event": "first_frame", ...},
// {"event": "screenshot", "path"}, {"event": "ready_for_restart"},
// {"event": "done"}); on stdin it waits for "restarted" after
// ready_for_restart. Every wait is bounded; the first failed check ends the
// run (exit 1) after a screenshot of the failure.

import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { launch } from './chromium.mjs';

const [base, artifactDir] = process.argv.slice(2);
/** A view token (env INFERCAST_TOKEN): the page must log in with it. */
const token = process.env.INFERCAST_TOKEN ?? '';
if (!base || !artifactDir) {
  console.error('usage: node e2e.mjs BASE_URL ARTIFACT_DIR');
  process.exit(2);
}
const RUN_TIMEOUT_MS = 170_000;
/** Paths of the DELETE requests the page sent (WHEP sessions it ended), and their statuses. */
const deletes = [];
const deleteStatuses = new Map();
const patches = [];

const emit = (event) => console.log(JSON.stringify(event));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` every 100 ms until it returns something truthy; throws after `timeoutMs`. */
async function waitFor(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

async function api(path) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const res = await fetch(base + path, { headers, signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status}`);
  return res.json();
}

/** Runs one check; reports it either way and rethrows a failure (ending the run). */
async function check(name, body) {
  const started = Date.now();
  try {
    const detail = (await body()) ?? {};
    emit({ event: 'check', name, ok: true, ms: Date.now() - started, ...detail });
  } catch (e) {
    emit({ event: 'check', name, ok: false, ms: Date.now() - started, error: String(e?.stack ?? e) });
    throw e;
  }
}

/** Stdin lines, one promise at a time. */
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function nextStdinLine(timeoutMs) {
  const line = await Promise.race([stdinLines.next(), sleep(timeoutMs).then(() => null)]);
  if (!line || line.done) throw new Error(`no line on stdin within ${timeoutMs} ms`);
  return line.value.trim();
}

// ---- page helpers (run in the browser) ------------------------------------

const tileSel = (camera) => `.tile[data-camera="${camera}"]`;

function tileInfo(page, camera) {
  return page.$eval(tileSel(camera), (t) => {
    const v = t.querySelector('video');
    const l = t.querySelector('.label');
    const n = t.querySelector('.notice');
    return {
      track: t.dataset.track,
      state: t.dataset.state,
      video: t.dataset.video,
      retries: Number(t.dataset.retries),
      firstFrameMs: t.dataset.firstFrameMs == null ? null : Number(t.dataset.firstFrameMs),
      width: v.videoWidth,
      height: v.videoHeight,
      frames: v.getVideoPlaybackQuality().totalVideoFrames,
      label: l.dataset.label ?? null,
      score: l.dataset.score == null ? null : Number(l.dataset.score),
      notice: n.hidden ? null : [...n.children].map((c) => c.textContent).filter(Boolean).join(' — '),
      stats: t.querySelector('.stats').textContent,
      protocol: t.dataset.protocol ?? null,
      serverPort: t.dataset.serverPort == null ? null : Number(t.dataset.serverPort),
    };
  });
}

/** Waits until the tile plays `track`, then checks size and that decoded frames grow over 3 s. */
async function assertPlays(page, camera, track, width) {
  const ready = await waitFor(`${camera} to play ${track}`, 15_000, async () => {
    const i = await tileInfo(page, camera);
    return i.track === track && i.video === 'playing' && i.width > 0 && i.frames > 0 && i;
  });
  if (ready.width !== width) throw new Error(`${camera}/${track}: videoWidth ${ready.width}, camera says ${width}`);
  await sleep(3000);
  const later = await tileInfo(page, camera);
  const grew = later.frames - ready.frames;
  if (grew < 25) throw new Error(`${camera}/${track}: only ${grew} frames decoded in 3 s`);
  if (later.track !== track || later.video !== 'playing') {
    throw new Error(`${camera}: now ${later.track}/${later.video}`);
  }
  emit({ event: 'first_frame', camera, track, ms: later.firstFrameMs });
  const { width: w, height, firstFrameMs, stats, protocol, serverPort } = later;
  return { camera, track, width: w, height, frames_in_3s: grew, first_frame_ms: firstFrameMs, stats, protocol, server_port: serverPort };
}

/** Waits until the server counts exactly `want` ({raw, annotated}) viewers of `camera`. */
async function assertViewers(camera, want) {
  return waitFor(`${camera} viewers ${JSON.stringify(want)}`, 5000, async () => {
    const cams = await api('/api/cameras');
    const v = cams.find((c) => c.name === camera)?.viewers;
    return v && v.raw === want.raw && v.annotated === want.annotated && v;
  });
}

/** Clicks the tile's `track` button: the new track plays, the old session is DELETEd, no reload. */
async function switchTrack(page, camera, track, width) {
  const old = track === 'raw' ? 'annotated' : 'raw';
  const deletesBefore = deletes.length;
  await page.click(`${tileSel(camera)} [data-track-button="${track}"]`, { timeout: 5000 });
  const played = await assertPlays(page, camera, track, width);
  const kept = await page.evaluate(() => window.__e2eNoReload === 'still here');
  if (!kept) throw new Error('the page reloaded (window global lost)');
  const viewers = await assertViewers(camera, { [track]: 1, [old]: 0 });
  const deleted = deletes.slice(deletesBefore);
  if (!deleted.some((p) => p.startsWith(`/whep/${camera}/${old}/`))) {
    throw new Error(`no DELETE of the ${old} session; DELETEs: ${deleted}`);
  }
  return { ...played, viewers, deleted };
}

// ---- the run ---------------------------------------------------------------

async function run(browserSlot) {
  // One --disable-features with Playwright's features and ours, checked on the running browser.
  await check('browser_flags', async () => {
    const launched = await launch();
    browserSlot.browser = launched.context;
    browserSlot.close = launched.close;
    const merged = launched.disableFeatures;
    return { disable_features: merged };
  });
  const browser = browserSlot.browser;
  browser.on('request', (r) => r.method() === 'DELETE' && deletes.push(new URL(r.url()).pathname));
  browser.on('response', (r) => {
    if (r.request().method() === 'PATCH') patches.push({ path: new URL(r.url()).pathname, status: r.status() });
  });
  browser.on('response', (r) => {
    if (r.request().method() === 'DELETE') deleteStatuses.set(new URL(r.url()).pathname, r.status());
  });
  const page = browser.pages()[0] ?? (await browser.newPage());
  browserSlot.page = page;
  page.setDefaultTimeout(10_000);
  page.on('console', (m) => console.error(`[page ${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => console.error(`[page error] ${e.message}`));

  const cameras = await api('/api/cameras');
  const names = cameras.map((c) => c.name);
  const widthOf = Object.fromEntries(cameras.map((c) => [c.name, c.width]));

  await check('logs_in', async () => {
    if (!token) return { skipped: 'no token' };
    await page.goto(base + '/', { waitUntil: 'load', timeout: 15_000 });
    await page.waitForSelector('#login:not([hidden])', { timeout: 10_000 });
    if ((await page.$$('section.tile')).length) throw new Error('tiles shown before logging in');
    await page.fill('#token', 'ic_wrong-token-for-the-test');
    await page.click('#login button[type=submit]');
    await waitFor('the refusal shown', 5000, () => page.textContent('#login-error').then((t) => t.includes('not accepted')));
    await page.fill('#token', token);
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#login[hidden]', { state: 'attached', timeout: 10_000 });
    await waitFor('tiles after logging in', 10_000, async () => (await page.$$('section.tile')).length > 0);
    // Leave only once every tile plays: the next check reloads the page and
    // counts the server's viewers, and a POST still in flight at the reload
    // would leave a session the server drops only at its connect timeout.
    await waitFor('tiles playing after logging in', 15_000, async () => {
      const videos = await page.$$eval('section.tile', (els) => els.map((e) => e.dataset.video));
      return videos.length === names.length && videos.every((v) => v === 'playing');
    });
    const cookies = await page.context().cookies();
    const session = cookies.find((c) => c.name === 'infercast_session');
    if (!session?.httpOnly || session.sameSite !== 'Strict') throw new Error(`session cookie ${JSON.stringify(session)}`);
    const https = base.startsWith('https://');
    if (https && !session.secure) throw new Error('session cookie over HTTPS lacks Secure');
    const secureContext = await page.evaluate(() => window.isSecureContext && location.protocol);
    if (https && secureContext !== 'https:') throw new Error(`page not in a secure https context: ${secureContext}`);
    return { https, cookie: { httpOnly: session.httpOnly, sameSite: session.sameSite, secure: session.secure } };
  });

  await check('page_loads_one_tile_per_camera', async () => {
    await page.goto(base + '/', { waitUntil: 'load', timeout: 15_000 });
    const tiles = await waitFor('a tile per camera', 10_000, async () => {
      const t = await page.$$eval('section.tile', (els) => els.map((e) => e.dataset.camera));
      return t.length === names.length && t;
    });
    if (JSON.stringify(tiles) !== JSON.stringify(names)) throw new Error(`tiles ${tiles} != cameras ${names}`);
    const states = await waitFor('tiles streaming', 10_000, async () => {
      const s = await page.$$eval('section.tile', (els) => els.map((e) => e.dataset.state));
      return s.every((x) => x === 'streaming') && s;
    });
    return { tiles, states };
  });

  await check('every_tile_plays', async () => {
    const played = await Promise.all(names.map((n) => assertPlays(page, n, 'raw', widthOf[n])));
    const viewers = await Promise.all(names.map((n) => assertViewers(n, { raw: 1, annotated: 0 })));
    if (played.some((p) => !/\d+ fps/.test(p.stats) || !/\d+ kbit\/s/.test(p.stats))) {
      throw new Error(`stats line lacks figures: ${played.map((p) => p.stats).join(' | ')}`);
    }
    // On the one-port SFU every session's selected candidate pair is UDP to the one port.
    const onePort = process.env.ONE_PORT ? Number(process.env.ONE_PORT) : null;
    if (onePort != null && played.some((p) => p.protocol !== 'udp' || p.server_port !== onePort)) {
      throw new Error(`selected pairs not all UDP to ${onePort}: ${JSON.stringify(played.map((p) => [p.protocol, p.server_port]))}`);
    }
    return { played, viewers };
  });

  await check('labels_match_api', async () => {
    const results = [];
    for (const camera of names) {
      const shown = await waitFor(`a label on ${camera}`, 10_000, async () => {
        const i = await tileInfo(page, camera);
        return i.label && i;
      });
      const history = await api(`/api/labels/${encodeURIComponent(camera)}?limit=20`);
      const match = history.find((l) => l.label === shown.label && Math.abs(l.score - shown.score) < 1e-6);
      if (!match) {
        throw new Error(`${camera}: page shows ${shown.label} ${shown.score}, not among the last 20 labels: ` +
          history.map((l) => `${l.label} ${l.score}`).join(', '));
      }
      // Live: the SSE stream keeps changing the shown score (labels come ~5/s).
      const changed = await waitFor(`${camera}'s label to update`, 5000, async () => {
        const i = await tileInfo(page, camera);
        return (i.score !== shown.score || i.label !== shown.label) && i;
      });
      results.push({ camera, label: shown.label, score: shown.score, then: `${changed.label} ${changed.score}` });
    }
    return { results };
  });

  const first = names[0];
  await page.evaluate(() => { window.__e2eNoReload = 'still here'; });
  await check('chat_in_focus', async () => {
    // Clicking a tile opens its room; a message posted from the page comes back as text.
    const camera = names[names.length - 1];
    await page.click(`${tileSel(camera)} h2`);
    await waitFor('the chat panel of the clicked camera', 5000, () =>
      page.$eval('#chat', (c, cam) => !c.hidden && c.dataset.camera === cam, camera),
    );
    const text = `<i>hi</i> from the page ${Date.now()}`;
    await page.fill('#chat [name=name]', 'e2e');
    await page.fill('#chat [name=text]', text);
    await page.click('#chat button[type=submit]');
    const shown = await waitFor('the message in the chat log', 5000, () =>
      page.$$eval('#chat li[data-type=chat]', (items, want) => {
        const li = items.find((i) => i.textContent.includes(want));
        return li && { text: li.textContent, markup: li.querySelector('i') != null };
      }, text),
    );
    if (shown.markup) throw new Error(`the message was rendered as markup: ${shown.text}`);
    const viewers = await page.$eval(`${tileSel(camera)} .viewers`, (v) => Number(v.dataset.viewers));
    if (!(viewers >= 1)) throw new Error(`the tile shows ${viewers} viewers while the page watches it`);
    return { camera, shown: shown.text, viewers };
  });
  await check('switch_to_annotated', () => switchTrack(page, first, 'annotated', widthOf[first]));

  // ICE restart over WHEP PATCH (what the page does when a connection is
  // lost): the same session goes on playing, no new POST, no reload.
  await check('ice_restart', async () => {
    const before = await tileInfo(page, first);
    const retriesBefore = before.retries;
    await page.$eval(tileSel(first), (t) => t.dispatchEvent(new Event('infercast:restart-ice')));
    const restarted = await waitFor(`${first} to restart ICE`, 10_000, async () => {
      const n = await page.$eval(tileSel(first), (t) => Number(t.dataset.iceRestarts));
      return n >= 1 && n;
    });
    const patched = patches.filter((p) => p.path.startsWith(`/whep/${first}/annotated/`));
    if (!patched.some((p) => p.status === 200)) throw new Error(`no PATCH answered 200: ${JSON.stringify(patches)}`);
    const mid = await tileInfo(page, first);
    await sleep(3000);
    const later = await tileInfo(page, first);
    const grew = later.frames - mid.frames;
    if (grew < 25) throw new Error(`only ${grew} frames decoded in the 3 s after the ICE restart`);
    if (later.retries !== retriesBefore || later.video !== 'playing') {
      throw new Error(`the player reconnected instead (retries ${retriesBefore} → ${later.retries}, ${later.video})`);
    }
    return { camera: first, ice_restarts: restarted, patches: patched, frames_in_3s: grew };
  });

  await check('screenshot', async () => {
    const path = join(artifactDir, 'viewer.png');
    await page.screenshot({ path, fullPage: true, timeout: 10_000 });
    emit({ event: 'screenshot', path });
    return { path };
  });

  await check('switch_back_to_raw', () => switchTrack(page, first, 'raw', widthOf[first]));

  await check('recovers_after_camera_restart', async () => {
    const before = Object.fromEntries(await Promise.all(names.map(async (n) => [n, await tileInfo(page, n)])));
    emit({ event: 'ready_for_restart' });
    // Watch the tiles while the Rust side kills the camera server and starts it again.
    const seen = {};
    for (const n of names) seen[n] = { states: new Set(), notices: new Set(), videos: new Set() };
    const restarted = nextStdinLine(60_000);
    let done = false;
    restarted.finally(() => { done = true; }).catch(() => {});
    const watch = (async () => {
      let shot = false;
      while (!done) {
        for (const n of names) {
          const i = await tileInfo(page, n);
          seen[n].states.add(i.state);
          seen[n].videos.add(i.video);
          if (i.notice) seen[n].notices.add(i.notice);
          if (i.notice && !shot) {
            shot = true;
            const path = join(artifactDir, 'viewer-camera-down.png');
            await page.screenshot({ path, fullPage: true, timeout: 10_000 });
            emit({ event: 'screenshot', path });
          }
        }
        await sleep(200);
      }
    })();
    const line = await restarted;
    await watch;
    if (line !== 'restarted') throw new Error(`unexpected line on stdin: ${line}`);
    const restartedAt = Date.now();
    const resumed = await Promise.all(names.map(async (n) => {
      const ok = await waitFor(`${n} to play again`, 30_000, async () => {
        const a = await tileInfo(page, n);
        await sleep(1000);
        const b = await tileInfo(page, n);
        return b.state === 'streaming' && b.video === 'playing' && b.notice == null && b.frames > a.frames && b;
      });
      const states = [...seen[n].states];
      const notices = [...seen[n].notices];
      if (states.every((s) => s === 'streaming') || notices.length === 0) {
        throw new Error(`${n}: the tile never showed the camera down (states ${states}, notices ${notices})`);
      }
      return {
        camera: n,
        resumed_after_ms: Date.now() - restartedAt,
        states_seen: states,
        notice: notices[0],
        video_phases_seen: [...seen[n].videos],
        video_reconnects: ok.retries - before[n].retries,
        frames_before: before[n].frames,
        frames_now: ok.frames,
      };
    }));
    return { resumed };
  });

  await check('sessions_deleted_on_pagehide', async () => {
    // The handler the browser runs when the page is left. (Requests sent while a page
    // really unloads are invisible to Playwright, so the event is dispatched here.)
    const before = deletes.length;
    await page.evaluate(() => dispatchEvent(new PageTransitionEvent('pagehide', { persisted: false })));
    const left = await Promise.all(names.map((n) => assertViewers(n, { raw: 0, annotated: 0 })));
    const sent = await waitFor('a DELETE per tile, answered', 5000, () => {
      const paths = deletes.slice(before);
      return names.every((n) => paths.some((p) => p.startsWith(`/whep/${n}/`) && deleteStatuses.get(p) < 300)) && paths;
    });
    return { viewers: left, deletes: sent.map((p) => `${p} → ${deleteStatuses.get(p)}`) };
  });
}

const slot = {};
const watchdog = setTimeout(() => {
  emit({ event: 'check', name: 'run_timeout', ok: false, error: `e2e.mjs ran past ${RUN_TIMEOUT_MS} ms` });
  process.exit(1);
}, RUN_TIMEOUT_MS);
let code = 0;
try {
  await run(slot);
} catch (e) {
  code = 1;
  console.error(e?.stack ?? e);
  if (slot.page && !slot.page.isClosed()) {
    const path = join(artifactDir, 'failure.png');
    const shot = slot.page.screenshot({ path, fullPage: true, timeout: 5000 });
    await shot.then(() => emit({ event: 'screenshot', path }), () => {});
  }
} finally {
  await slot.close?.();
  clearTimeout(watchdog);
}
emit({ event: 'done', ok: code === 0 });
process.exit(code);
