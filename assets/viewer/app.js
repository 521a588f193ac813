// The viewer page: builds one tile per camera from /api/cameras and keeps
// them current (re-polled every 2 s), routes labels from the SSE stream to
// their tiles, and ends every video session when the page goes away.

import { AuthError, getJson, hasToken, login, watchLabels } from './api.js';
import { ChatPanel } from './chat.js';
import { Publisher } from './publish.js';
import { Tile } from './tile.js';

const POLL_MS = 2000;

const grid = document.getElementById('grid');
const loginForm = document.getElementById('login');
const summary = document.getElementById('summary');
/** Tiles by camera name, in the order of /api/cameras. */
const tiles = new Map();
/** The tiles by camera name, for people and tests inspecting the page (e.g. `tile.overlay.drawn`). */
window.infercastTiles = tiles;
/** The newest label per camera, also for cameras whose tile is not built yet. */
const latestLabels = new Map();
let iceServers = [];
/** Cluster mode: the id of the node serving this page (`/api/cluster`), else null. */
let thisNode = null;
const chat = new ChatPanel(document.getElementById('chat'));
let focused = null;

/** Puts `tile` in focus: its room's chat opens beside the grid. */
function focus(tile) {
  focused?.element.classList.remove('focused');
  focused = tile;
  tile.element.classList.add('focused');
  chat.focus(tile.name, tile.base);
}

function setSummary(text, ok) {
  summary.textContent = text;
  summary.dataset.ok = String(ok);
}

function showLabel(label) {
  latestLabels.set(label.camera, label);
  tiles.get(label.camera)?.showLabel(label);
}

/** Adds, updates and removes tiles to match `cameras`. */
function sync(cameras) {
  const names = new Set(cameras.map((c) => c.name));
  for (const [name, tile] of tiles) {
    if (!names.has(name)) {
      tile.stop();
      tile.element.remove();
      tiles.delete(name);
    }
  }
  for (const camera of cameras) {
    let tile = tiles.get(camera.name);
    if (tile) {
      tile.update(camera);
      if (tile === focused) chat.focus(tile.name, tile.base); // follows a camera that moved node
    } else {
      tile = new Tile(camera, { iceServers, thisNode, onFocus: focus });
      tiles.set(camera.name, tile);
      const label = latestLabels.get(camera.name);
      if (label) tile.showLabel(label);
    }
    grid.append(tile.element); // keeps the API's order; a no-op when already in place
  }
  if (!focused && tiles.size > 0) focus(tiles.values().next().value);
  if (cameras.length === 0) {
    const empty = Object.assign(document.createElement('p'), { className: 'empty', textContent: 'No cameras.' });
    grid.replaceChildren(empty);
  } else {
    grid.querySelector('.empty')?.remove();
  }
  const streaming = cameras.filter((c) => c.state === 'streaming').length;
  setSummary(`${cameras.length} camera${cameras.length === 1 ? '' : 's'} · ${streaming} streaming`, true);
}

async function poll() {
  try {
    sync(await getJson('/api/cameras'));
  } catch (e) {
    if (e instanceof AuthError) return askForToken(e.message); // stops polling until logged in again
    setSummary(`server unreachable (${e.message})`, false);
    for (const tile of tiles.values()) tile.setOffline();
  }
  setTimeout(poll, POLL_MS);
}

/** Shows the login form; `start` runs again once a token is accepted. */
function askForToken(reason) {
  setSummary(reason, false);
  for (const tile of tiles.values()) tile.stop();
  loginForm.hidden = false;
  loginForm.querySelector('input').focus();
}

loginForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = loginForm.querySelector('input');
  const error = document.getElementById('login-error');
  try {
    await login(input.value.trim());
    input.value = '';
    error.textContent = '';
    loginForm.hidden = true;
    start();
  } catch (err) {
    error.textContent = err instanceof AuthError ? 'That token was not accepted.' : err.message;
  }
});

// Publishing this browser's camera (WHIP): the form's button starts and stops it.
const publishForm = document.getElementById('publish');
const publishStatus = publishForm.querySelector('.publish-status');
let publisher = null;
publishForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const button = publishForm.querySelector('button');
  const input = publishForm.querySelector('input');
  if (publisher?.publishing) {
    publisher.stop();
    publisher = null;
    publishStatus.textContent = '';
    button.textContent = 'Publish my camera';
    input.disabled = false;
    return;
  }
  button.disabled = true;
  publishStatus.textContent = 'starting…';
  try {
    publisher = new Publisher(iceServers);
    await publisher.start(input.value.trim());
    publishStatus.textContent = `publishing as ${publisher.camera}`;
    button.textContent = 'Stop publishing';
    input.disabled = true;
  } catch (err) {
    publisher = null;
    publishStatus.textContent = `not published: ${err.message}`;
  } finally {
    button.disabled = false;
  }
});
addEventListener('pagehide', () => publisher?.stop());

/** The label stream is open (it survives a re-login: it rides on the cookie). */
let labelsWatched = false;

async function start() {
  try {
    iceServers = (await getJson('/api/webrtc')).ice_servers ?? [];
    thisNode = await getJson('/api/cluster').then(
      (info) => info.node_id,
      () => null, // 404: not in cluster mode
    );
  } catch (e) {
    if (e instanceof AuthError) return askForToken(e.message);
    setSummary(`server unreachable (${e.message})`, false);
    setTimeout(start, POLL_MS);
    return;
  }
  for (const tile of tiles.values()) tile.resume();
  if (labelsWatched) return poll();
  labelsWatched = true;
  watchLabels({
    onLabel: showLabel,
    // (Re)connected: catch up on what was missed while the stream was down.
    onOpen: () =>
      getJson('/api/labels')
        .then((labels) => labels.forEach(showLabel))
        .catch(() => {}),
  });
  poll();
}

// Leaving the page ends its sessions on the server; a page restored from the
// back/forward cache starts them again.
addEventListener('pagehide', () => tiles.forEach((t) => t.stop()));
addEventListener('pageshow', (e) => e.persisted && tiles.forEach((t) => t.resume()));

// A token kept for this tab renews the session cookie (the label stream's) first.
(hasToken() ? login(sessionStorage.getItem('infercast.token')).catch(() => {}) : Promise.resolve()).then(start);
