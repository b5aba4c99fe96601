// facestream web UI: one page, no dependencies. Everything shown comes from facestream's own
// API; text from the server is always set as text (never as HTML).
'use strict';

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const $ = (sel) => document.querySelector(sel);
const state = {
  info: { gates: [], visitors: false, snapshots: false, login: false },
  cameras: new Map(),   // id -> { tile, img, boxes, caption, last: {frames, at}, fps }
  names: new Map(),     // track id -> { person, known }
  events: [],
  persons: [],
};

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function say(msg) {
  $('#status').textContent = msg;
  if (msg) setTimeout(() => { if ($('#status').textContent === msg) $('#status').textContent = ''; }, 6000);
}

// Every call to the API: the session's CSRF token on changes; a lost session goes to the login.
async function api(method, url, body, headers = {}) {
  const opts = { method, headers: { ...headers }, credentials: 'same-origin' };
  if (method !== 'GET') opts.headers['X-CSRF-Token'] = csrf;
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers['Content-Type'] = 'application/json'; }
  const r = await fetch(url, opts);
  if (r.status === 401 && state.info.login) { location.href = '/ui/login'; throw new Error('logged out'); }
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const msg = json && json.error ? json.error.message : `${r.status} ${r.statusText}`;
    const err = new Error(msg); err.status = r.status; err.code = json && json.error && json.error.code; throw err;
  }
  return json;
}

// ---- pages ----
const pages = ['live', 'timeline', 'gallery', 'visitors', 'gates'];
function route() {
  let page = (location.hash || '#live').slice(1);
  if (!pages.includes(page)) page = 'live';
  for (const p of pages) $(`#page-${p}`).hidden = p !== page;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.getAttribute('href') === `#${page}`) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  document.title = `facestream: ${page}`;
  if (page === 'timeline') loadTimeline();
  if (page === 'gallery') loadPersons();
  if (page === 'visitors') loadVisitors();
  if (page === 'gates') loadGates();
}

// ---- live view ----
function tileFor(cam) {
  let c = state.cameras.get(cam.id);
  if (c) return c;
  const tiles = $('#tiles');
  const empty = tiles.querySelector('.empty');
  if (empty) empty.remove();
  const img = el('img', { alt: `Camera ${cam.id}`, width: 640, height: 360 });
  const boxes = el('div', { class: 'boxes', 'aria-hidden': 'true' });
  const name = el('b', { text: cam.id });
  const st = el('span', { class: 'state' });
  const fps = el('span', { class: 'fps' });
  const gate = el('span', { class: 'gate-note', 'aria-live': 'polite' });
  const tile = el('figure', { class: 'tile', 'data-camera': cam.id }, el('div', { class: 'frame' }, img, boxes), el('figcaption', {}, name, st, fps, gate));
  tiles.append(tile);
  c = { tile, img, boxes, st, fps, gate, last: null, boxesAt: 0, polling: false };
  state.cameras.set(cam.id, c);
  const opt = el('option', { value: cam.id, text: cam.id });
  $('#f-camera').append(opt);
  pollFrame(cam.id);
  return c;
}

// One frame at a time per camera, at the server's live rate; paused while the tab is hidden.
function pollFrame(id) {
  const c = state.cameras.get(id);
  if (!c || c.polling) return;
  c.polling = true;
  const next = (ms) => setTimeout(() => { c.polling = false; pollFrame(id); }, ms);
  if (document.hidden || $('#page-live').hidden) { next(1000); return; }
  const started = Date.now();
  const interval = 1000 / (state.info.live_fps || 2);
  c.img.onload = () => next(Math.max(0, interval - (Date.now() - started)));
  // The first request opens the server's tap (no frame yet): ask again soon.
  c.img.onerror = () => next(c.img.naturalWidth ? 1000 : 300);
  c.img.src = `/api/cameras/${encodeURIComponent(id)}/frame.jpg?t=${started}`;
}

function updateCameras(list) {
  const now = Date.now();
  for (const cam of list) {
    const c = tileFor(cam);
    c.st.textContent = cam.state;
    c.st.className = `state state-${cam.state}`;
    if (cam.last_error && cam.state !== 'streaming') c.st.title = cam.last_error; else c.st.removeAttribute('title');
    if (c.last && now > c.last.at) c.fps.textContent = `${(((cam.frames - c.last.frames) * 1000) / (now - c.last.at)).toFixed(1)} fps`;
    c.last = { frames: cam.frames, at: now };
  }
}

// Boxes are drawn in the page from the stream; names come from the identity events.
function drawBoxes(b) {
  const c = state.cameras.get(b.camera);
  if (!c) return;
  c.boxesAt = Date.now();
  // The image keeps its aspect ratio inside the frame: place boxes over the picture itself.
  const fw = c.boxes.clientWidth || 1, fh = c.boxes.clientHeight || 1;
  const scale = Math.min(fw / b.width, fh / b.height);
  const ox = (fw - b.width * scale) / 2, oy = (fh - b.height * scale) / 2;
  c.boxes.replaceChildren(...b.tracks.map((t) => {
    const n = state.names.get(t.track_id);
    const known = n && n.known;
    const label = n ? n.person : (t.confirmed ? '…' : '');
    const box = el('div', { class: `box${known ? ' known' : ''}${t.confirmed ? '' : ' tentative'}`, 'data-track': t.track_id }, label ? el('span', { text: label }) : null);
    const [x1, y1, x2, y2] = t.bbox;
    box.style.left = `${ox + x1 * scale}px`;
    box.style.top = `${oy + y1 * scale}px`;
    box.style.width = `${(x2 - x1) * scale}px`;
    box.style.height = `${(y2 - y1) * scale}px`;
    return box;
  }));
}

setInterval(() => {
  for (const c of state.cameras.values()) if (c.boxesAt && Date.now() - c.boxesAt > 2000) { c.boxes.replaceChildren(); c.boxesAt = 0; }
}, 1000);

function onEvent(ev) {
  if (ev.event === 'identified') state.names.set(ev.track_id, { person: ev.person, known: ev.person !== 'unknown' });
  if (ev.event === 'visitor') state.names.set(ev.track_id, { person: ev.visitor, known: false });
  if (ev.event === 'gate_decision') {
    const g = state.info.gates.length ? ev.camera : null;
    const c = g && state.cameras.get(g);
    if (c) {
      c.tile.classList.remove('granted', 'denied');
      c.tile.classList.add(ev.outcome);
      c.gate.textContent = `${ev.gate}: ${ev.outcome}${ev.reason ? ` (${ev.reason})` : ''}${ev.person ? `: ${ev.person}` : ''} in ${(ev.latency_s * 1000).toFixed(0)} ms`;
      setTimeout(() => { c.tile.classList.remove(ev.outcome); }, 3000);
    }
    if (!$('#page-gates').hidden) loadGates();
  }
  state.events.unshift(ev);
  if (state.events.length > 500) state.events.pop();
  if (!$('#page-timeline').hidden && matches(ev)) $('#events').prepend(eventItem(ev));
}

function connect() {
  const src = new EventSource('/api/ui/stream');
  src.onopen = () => { $('#conn').textContent = 'live'; $('#conn').className = 'conn ok'; };
  src.onerror = () => { $('#conn').textContent = 'reconnecting'; $('#conn').className = 'conn'; };
  src.addEventListener('cameras', (m) => updateCameras(JSON.parse(m.data)));
  src.addEventListener('boxes', (m) => drawBoxes(JSON.parse(m.data)));
  src.addEventListener('event', (m) => onEvent(JSON.parse(m.data)));
}

// ---- timeline ----
function filters() {
  return { camera: $('#f-camera').value, person: $('#f-person').value.trim().toLowerCase(), kind: $('#f-kind').value };
}
function matches(ev) {
  const f = filters();
  if (f.camera && ev.camera !== f.camera) return false;
  if (f.kind && ev.event !== f.kind) return false;
  if (f.person && !`${ev.person || ''} ${ev.visitor || ''}`.toLowerCase().includes(f.person)) return false;
  return true;
}
function describe(ev) {
  switch (ev.event) {
    case 'identified': return ev.person === 'unknown' ? 'Unknown face' : ev.person;
    case 'track_ended': return `${ev.person === 'unknown' ? 'Unknown' : ev.person} left`;
    case 'visitor': return ev.new ? `New visitor ${ev.visitor}` : `Visitor ${ev.visitor}`;
    case 'gate_decision': return `Gate ${ev.gate}: ${ev.outcome}${ev.reason ? ` (${ev.reason})` : ''}`;
    case 'camera_state': return `Camera ${ev.state}`;
    case 'track_started': return 'Face appeared';
    default: return ev.event;
  }
}
function eventThumb(ev) {
  if (ev.snapshot) return el('img', { src: `/api/snapshots/${encodeURIComponent(ev.snapshot)}`, alt: '', loading: 'lazy', onerror: (e) => { e.target.style.visibility = 'hidden'; } });
  if (ev.event === 'gate_decision' && ev.log_id) return el('img', { src: `/api/gates/${encodeURIComponent(ev.gate)}/log/${ev.log_id}/crop`, alt: '', loading: 'lazy' });
  return el('span', { class: 'thumb', 'aria-hidden': 'true' });
}
function eventItem(ev) {
  const cls = ev.event === 'identified' && ev.person !== 'unknown' ? 'what known' : ev.outcome === 'denied' ? 'what denied' : 'what';
  const time = new Date(ev.time).toLocaleTimeString();
  return el('li', {}, el('button', { type: 'button', onclick: () => showDetail(ev) },
    eventThumb(ev),
    el('span', {}, el('span', { class: cls, text: describe(ev) }), el('br'), el('span', { class: 'meta', text: `${ev.camera} · ${ev.track_id || ''}` })),
    el('span', { class: 'meta', text: time })));
}
function showDetail(ev) {
  const dl = el('dl', { class: 'kv' });
  const add = (k, v) => { if (v !== undefined && v !== null && v !== '') dl.append(el('dt', { text: k }), el('dd', { text: typeof v === 'object' ? JSON.stringify(v) : String(v) })); };
  add('Kind', ev.event); add('Time', ev.time); add('Camera', ev.camera); add('Track', ev.track_id);
  add('Person', ev.person); add('Visitor', ev.visitor); add('Distance', ev.distance !== undefined ? ev.distance.toFixed(3) : undefined);
  add('Threshold', ev.threshold); add('Votes', ev.votes); add('Score', ev.score);
  add('Nearest enrolled (not given)', ev.nearest_person ? `${ev.nearest_person} at ${ev.nearest_distance.toFixed(3)}` : undefined);
  add('Latency', ev.latency_s !== undefined ? `${(ev.latency_s * 1000).toFixed(0)} ms` : undefined);
  add('Outcome', ev.outcome); add('Reason', ev.reason); add('Evidence', ev.evidence); add('Frames', ev.frames);
  add('First seen', ev.first_seen); add('Last seen', ev.last_seen);
  const body = $('#detail-body');
  body.replaceChildren(dl);
  if (ev.snapshot) {
    // The best shot is written when the track ends.
    const pending = (e) => e.target.replaceWith(el('p', { class: 'hint', text: 'The best shot is kept when the track ends.' }));
    const shots = el('div', { class: 'shots' },
      el('img', { src: `/api/snapshots/${encodeURIComponent(ev.snapshot)}`, alt: 'Best face of the track', width: 150, height: 150, onerror: pending }),
      el('img', { src: `/api/snapshots/${encodeURIComponent(ev.snapshot)}?kind=context`, alt: 'Where the face was', width: 320, onerror: (e) => e.target.remove() }));
    body.append(shots);
  } else if (ev.event === 'gate_decision' && ev.log_id) {
    body.append(el('img', { src: `/api/gates/${encodeURIComponent(ev.gate)}/log/${ev.log_id}/crop`, alt: 'Face at the decision', width: 150, height: 150 }));
  }
  $('#detail-title').textContent = describe(ev);
  $('#detail').showModal();
}
async function loadTimeline() {
  const f = filters();
  const q = new URLSearchParams({ limit: '200' });
  for (const k of ['camera', 'person', 'kind']) if (f[k]) q.set(k, f[k]);
  try {
    const r = await api('GET', `/api/events/recent?${q}`);
    $('#events').replaceChildren(...r.events.map(eventItem));
    if (!r.events.length) $('#events').append(el('li', { class: 'empty', text: 'No event yet.' }));
  } catch (e) { say(`Timeline: ${e.message}`); }
}

// ---- gallery ----
async function loadPersons() {
  try {
    const r = await api('GET', '/api/persons');
    state.persons = r.persons;
    const list = $('#persons');
    list.replaceChildren(...r.persons.slice(0, 500).map(personCard));
    if (!r.persons.length) list.append(el('li', { class: 'empty', text: 'Nobody is enrolled through the store yet (people of the config file are listed in the config).' }));
  } catch (e) { say(`Gallery: ${e.message}`); }
}
function personCard(p) {
  const faces = el('ul', { class: 'faces', 'aria-label': `Faces of ${p.name}` });
  const groups = (p.metadata && Array.isArray(p.metadata.groups)) ? p.metadata.groups : [];
  const card = el('li', { class: 'card person', 'data-person': p.name },
    el('header', {},
      el('h2', { text: p.name }),
      el('span', { class: 'meta', text: `${p.samples} face${p.samples === 1 ? '' : 's'}` }),
      el('button', { type: 'button', onclick: () => rename(p) }, 'Rename'),
      el('button', { type: 'button', onclick: () => editGroups(p, groups) }, 'Groups'),
      el('button', { type: 'button', class: 'danger', onclick: () => removePerson(p) }, 'Remove')),
    el('span', { class: 'groups', text: groups.length ? `Groups: ${groups.join(', ')}` : 'No group' }),
    faces);
  api('GET', `/api/persons/${p.id}/faces`).then((r) => {
    faces.replaceChildren(...r.faces.map((f) => el('li', {},
      f.crop ? el('img', { class: 'thumb', src: `/api/faces/${f.id}/crop`, alt: `Face ${f.id} of ${p.name}, quality ${f.quality.toFixed(2)}`, loading: 'lazy', width: 56, height: 56 })
        : el('span', { class: 'thumb', title: 'no crop kept (enrolled from the command line)' }),
      el('button', { type: 'button', 'aria-label': `Remove face ${f.id} of ${p.name}`, onclick: () => removeFace(p, f) }, '×'))));
  }).catch(() => {});
  return card;
}
async function rename(p) {
  const name = prompt(`New name for ${p.name}`, p.name);
  if (!name || name === p.name) return;
  try { await api('PATCH', `/api/persons/${p.id}`, { name }); say(`${p.name} is now ${name}.`); loadPersons(); } catch (e) { say(`Rename: ${e.message}`); }
}
async function editGroups(p, groups) {
  const text = prompt(`Groups of ${p.name} (comma separated)`, groups.join(', '));
  if (text === null) return;
  const list = text.split(',').map((g) => g.trim()).filter(Boolean);
  try { await api('PUT', `/api/persons/${p.id}/groups`, { groups: list }); loadPersons(); } catch (e) { say(`Groups: ${e.message}`); }
}
async function removePerson(p) {
  if (!confirm(`Remove ${p.name} and all their faces? Cameras stop recognising them at once.`)) return;
  try { await api('DELETE', `/api/persons/${p.id}`); say(`${p.name} removed.`); loadPersons(); } catch (e) { say(`Remove: ${e.message}`); }
}
async function removeFace(p, f) {
  if (!confirm(`Remove this face of ${p.name}?`)) return;
  try { await api('DELETE', `/api/faces/${f.id}`); loadPersons(); } catch (e) { say(`Remove face: ${e.message}`); }
}
async function enroll(e) {
  e.preventDefault();
  const name = $('#enroll-name').value.trim();
  const files = [...$('#enroll-files').files];
  const out = $('#enroll-result');
  out.replaceChildren();
  if (!name || !files.length) return;
  const button = e.target.querySelector('button[type="submit"]');
  button.disabled = true;
  let id = null, created = false;
  try {
    try {
      id = (await api('POST', '/api/persons', { name })).person.id; created = true;
    } catch (err) {
      if (err.status !== 409) throw err;
      const existing = (await api('GET', '/api/persons')).persons.find((p) => p.name === name);
      if (!existing) throw err;
      id = existing.id;
    }
    let added = 0;
    for (const file of files) {
      const form = new FormData();
      form.append('image', file, file.name);
      try {
        const r = await api('POST', `/api/persons/${id}/faces`, form);
        added += 1;
        out.append(el('li', { class: 'ok', text: `${file.name}: enrolled (quality ${r.quality.toFixed(2)})` }));
        for (const w of r.warnings || []) out.append(el('li', { class: 'warn', text: `${file.name}: ${w}` }));
      } catch (err) {
        out.append(el('li', { class: 'bad', text: `${file.name}: ${err.message}` }));
      }
    }
    if (!added && created) await api('DELETE', `/api/persons/${id}`);
    out.append(el('li', { class: added ? 'ok' : 'bad', text: added ? `${name}: ${added} of ${files.length} photo(s) enrolled.` : `${name} was not enrolled: no photo was usable.` }));
    if (added) e.target.reset();
  } catch (err) {
    out.append(el('li', { class: 'bad', text: `${name}: ${err.message}` }));
  } finally {
    button.disabled = false;
    loadPersons();
  }
}

// ---- visitors ----
async function loadVisitors() {
  try {
    const r = await api('GET', '/api/visitors');
    const list = $('#visitors');
    list.replaceChildren(...r.visitors.map((v) => el('li', { class: 'card', 'data-visitor': v.name },
      v.best_snapshot ? el('img', { src: `/api/snapshots/${encodeURIComponent(v.best_snapshot)}`, alt: `Best face of ${v.name}`, loading: 'lazy' }) : el('span', { class: 'thumb' }),
      el('b', { text: v.name }),
      el('span', { class: 'meta', text: `${v.tracks} sighting${v.tracks === 1 ? '' : 's'} · last ${new Date(v.last_seen_ms).toLocaleString()}${v.state === 'ignored' ? ' · ignored' : ''}` }),
      el('span', { class: 'actions' },
        el('button', { type: 'button', onclick: () => nameVisitor(v) }, 'Who is this?'),
        el('button', { type: 'button', onclick: () => ignoreVisitor(v) }, v.state === 'ignored' ? 'Stop ignoring' : 'Ignore')))));
    if (!r.visitors.length) list.append(el('li', { class: 'empty', text: 'No unknown visitor yet.' }));
  } catch (e) { say(`Visitors: ${e.message}`); }
}
async function nameVisitor(v) {
  const name = prompt(`Who is ${v.name}? Their best faces are enrolled under this name.`);
  if (!name) return;
  try { await api('POST', `/api/visitors/${encodeURIComponent(v.name)}/name`, { name }); say(`${v.name} is ${name}.`); loadVisitors(); } catch (e) { say(`Name: ${e.message}`); }
}
async function ignoreVisitor(v) {
  try { await api('POST', `/api/visitors/${encodeURIComponent(v.name)}/ignore`, { ignored: v.state !== 'ignored' }); loadVisitors(); } catch (e) { say(`Ignore: ${e.message}`); }
}

// ---- gates ----
async function loadGates() {
  const box = $('#gates');
  const parts = [];
  for (const g of state.info.gates) {
    try {
      const r = await api('GET', `/api/gates/${encodeURIComponent(g)}/log?limit=20`);
      const rows = r.entries.map((x) => el('tr', { class: x.outcome },
        el('td', { text: new Date(x.at_ms).toLocaleString() }),
        el('td', { text: x.outcome }), el('td', { text: x.reason || '' }), el('td', { text: x.person || '' }),
        el('td', { text: `${(x.latency_s * 1000).toFixed(0)} ms` }),
        el('td', {}, x.has_crop ? el('img', { class: 'thumb', src: `/api/gates/${encodeURIComponent(g)}/log/${x.id}/crop`, alt: 'Face at the decision', loading: 'lazy' }) : '')));
      parts.push(el('section', { class: 'card' }, el('h2', { text: `Gate ${g}` }),
        rows.length ? el('div', { class: 'table-wrap' }, el('table', {}, el('thead', {}, el('tr', {}, ...['Time', 'Outcome', 'Reason', 'Person', 'Latency', 'Face'].map((h) => el('th', { scope: 'col', text: h })))), el('tbody', {}, ...rows)))
          : el('p', { class: 'empty', text: 'No decision yet.' })));
    } catch (e) { parts.push(el('p', { class: 'bad', text: `Gate ${g}: ${e.message}` })); }
  }
  box.replaceChildren(...parts);
  if (!state.info.gates.length) box.append(el('p', { class: 'empty', text: 'No gate is configured ([[gates]] in the configuration).' }));
}

// ---- theme, start ----
function applyTheme(t) { if (t) document.documentElement.dataset.theme = t; else delete document.documentElement.dataset.theme; }
applyTheme(localStorage.getItem('theme'));
$('#theme').addEventListener('click', () => {
  const dark = document.documentElement.dataset.theme ? document.documentElement.dataset.theme === 'dark' : matchMedia('(prefers-color-scheme: dark)').matches;
  const t = dark ? 'light' : 'dark';
  localStorage.setItem('theme', t); applyTheme(t);
});
$('#logout').addEventListener('click', async () => { try { await api('POST', '/ui/logout'); } finally { location.href = '/ui/login'; } });
$('#enroll').addEventListener('submit', enroll);
$('#filters').addEventListener('input', () => loadTimeline());
$('#filters').addEventListener('submit', (e) => e.preventDefault());
window.addEventListener('hashchange', route);
document.addEventListener('visibilitychange', () => { if (!document.hidden) for (const id of state.cameras.keys()) pollFrame(id); });

(async () => {
  try { state.info = await api('GET', '/api/ui/info'); } catch (e) { say(`Cannot reach facestream: ${e.message}`); }
  $('#nav-visitors').hidden = !state.info.visitors;
  $('#nav-gates').hidden = !state.info.gates.length;
  $('#logout').hidden = !state.info.login;
  try { updateCameras(await api('GET', '/api/cameras')); } catch (_) { /* the stream brings them */ }
  connect();
  route();
})();
