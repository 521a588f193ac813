// The chat panel of the camera in focus (its room): the room's events from
// /api/cameras/{name}/chat/stream (history first, then chat, joins and
// leaves), a form to post, and the display name the page also sends with
// its WHEP offers. Everything the room says is shown as text, never markup.
//
// Test hooks: <aside id="chat" data-camera> with li[data-type] per event.

import { authHeaders } from './api.js';

const NAME_KEY = 'infercast.name';
const MAX_LINES = 200;

/** The display name the user chose (kept across visits), or ''. */
export function displayName() {
  return localStorage.getItem(NAME_KEY) ?? '';
}

export class ChatPanel {
  #source = null;
  #base = '';
  #camera = null;

  constructor(element) {
    this.element = element;
    this.list = element.querySelector('ol');
    this.form = element.querySelector('form');
    this.status = element.querySelector('.chat-status');
    this.nameInput = this.form.querySelector('[name=name]');
    this.nameInput.value = displayName();
    this.nameInput.addEventListener('change', () => localStorage.setItem(NAME_KEY, this.nameInput.value.trim()));
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.#send();
    });
  }

  /** Shows the room of `camera` (`base`: the node that serves it, '' for this one). */
  focus(camera, base = '') {
    if (camera === this.#camera && base === this.#base) return;
    this.#source?.close();
    this.#camera = camera;
    this.#base = base;
    this.element.hidden = false;
    this.element.dataset.camera = camera;
    this.element.querySelector('h2').textContent = `Chat · ${camera}`;
    this.list.replaceChildren();
    this.status.textContent = '';
    const url = `${base}/api/cameras/${encodeURIComponent(camera)}/chat/stream`;
    this.#source = new EventSource(url);
    for (const type of ['chat', 'join', 'leave']) {
      this.#source.addEventListener(type, (e) => this.#show(JSON.parse(e.data)));
    }
  }

  #show(event) {
    const time = new Date(event.at).toLocaleTimeString();
    const li = document.createElement('li');
    li.dataset.type = event.type;
    const who = document.createElement('strong');
    who.textContent = event.name;
    if (event.type === 'chat') {
      li.append(`${time} `, who, `: ${event.text}`);
    } else {
      li.append(`${time} `, who, event.type === 'join' ? ` joined (${event.track})` : ` left (${event.track})`);
    }
    this.list.append(li);
    while (this.list.children.length > MAX_LINES) this.list.firstElementChild.remove();
    li.scrollIntoView({ block: 'nearest' });
  }

  async #send() {
    const input = this.form.querySelector('[name=text]');
    const name = this.nameInput.value.trim() || 'viewer';
    localStorage.setItem(NAME_KEY, name);
    const res = await fetch(`${this.#base}/api/cameras/${encodeURIComponent(this.#camera)}/chat`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...authHeaders() },
      body: JSON.stringify({ name, text: input.value }),
    }).catch((e) => ({ ok: false, status: 0, json: async () => ({ error: { message: e.message } }) }));
    if (res.ok) {
      input.value = '';
      this.status.textContent = '';
    } else {
      const body = await res.json().catch(() => ({}));
      this.status.textContent = body?.error?.message ?? `HTTP ${res.status}`;
    }
  }
}
