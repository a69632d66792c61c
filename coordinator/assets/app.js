'use strict';
// framewise dashboard: plain ES2020, no dependencies. Pure functions build
// HTML strings from API data; a small DOM patcher applies them in place so
// links, hovers and tooltips survive the once-per-second refresh.

// ---- JS error reporting (kept first so nothing below can fail unseen) ----
function reportError(msg) {
  console.error('[framewise]', msg);
  const el = typeof document !== 'undefined' && document.getElementById('js-errors');
  if (!el) return;
  const line = document.createElement('div');
  line.textContent = String(msg);
  el.appendChild(line);
  el.hidden = false;
}
if (typeof window !== 'undefined') {
  window.addEventListener('error', (e) =>
    reportError(e.message || (e.error && e.error.message) || 'script error'));
  window.addEventListener('unhandledrejection', (e) =>
    reportError('unhandled rejection: ' + ((e.reason && e.reason.message) || e.reason)));
}

// ---- formatting helpers ----
const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const esc = (v) => (v == null ? '' : String(v).replace(/[&<>"']/g, (c) => ESC[c]));
const num = (v) => { const n = Number(v); return Number.isFinite(n) ? n : 0; };
const int = (v) => String(Math.round(num(v)));
const fmtRate = (v) => num(v).toFixed(1);
const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

function fmtDuration(s) {
  if (s === null || s === undefined || s === '' || !Number.isFinite(Number(s)) || Number(s) < 0) return '—';
  const t = Math.round(Number(s));
  const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), sec = t % 60;
  if (h) return `${h}h ${m}m`;
  return m ? `${m}m ${sec}s` : `${sec}s`;
}

function fmtAgo(ms, now) {
  if (!num(ms)) return 'never';
  const s = Math.max(0, Math.round((num(now) - num(ms)) / 1000));
  if (s < 60) return `${s}s ago`;
  return s < 3600 ? `${Math.floor(s / 60)}m ago` : `${Math.floor(s / 3600)}h ago`;
}

function fmtTime(ms, now) {
  if (!num(ms)) return '—';
  const d = new Date(num(ms)), n = new Date(num(now) || Date.now());
  const time = d.toLocaleTimeString([], { hour12: false });
  return d.toDateString() === n.toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

function fileName(url) {
  const s = String(url || '').split(/[?#]/)[0];
  const last = s.slice(s.lastIndexOf('/') + 1) || s;
  try { return decodeURIComponent(last); } catch (_) { return last; }
}

function pct(done, total) {
  const t = num(total);
  return t > 0 ? Math.min(100, Math.max(0, (num(done) / t) * 100)) : 0;
}

function workerColor(id) {
  let h = 2166136261; // FNV-1a: a stable colour per worker id
  for (const ch of String(id || '')) { h ^= ch.codePointAt(0); h = Math.imul(h, 16777619); }
  h >>>= 0;
  return `hsl(${h % 360}, ${55 + ((h >>> 9) % 25)}%, ${50 + ((h >>> 17) % 12)}%)`;
}

const stateClass = (s) => 'st-' + String(s || 'unknown').toLowerCase().replace(/[^a-z]/g, '');
const badge = (s) => `<span class="badge ${stateClass(s)}">${esc(s || 'unknown')}</span>`;
const jobHref = (id) => '#/jobs/' + esc(encodeURIComponent(String(id || '')));
const jobLink = (id) => `<a href="${jobHref(id)}">${esc(id || '?')}</a>`;
const swatch = (id) => `<i class="sw" style="background:${workerColor(id)}"></i>`;

function progressHtml(done, total) {
  const p = pct(done, total).toFixed(1);
  return `<div class="progress" title="${p}%"><div class="bar" style="width:${p}%"></div></div>` +
    `<div class="sub">${int(done)} / ${num(total) > 0 ? int(total) : '?'} frames</div>`;
}

function taskCounts(tasks) {
  const c = { pending: 0, leased: 0, done: 0, failed: 0 };
  if (Array.isArray(tasks)) {
    for (const t of tasks) if (isObj(t) && Object.prototype.hasOwnProperty.call(c, t.state)) c[t.state]++;
  } else if (isObj(tasks)) {
    for (const k of Object.keys(c)) c[k] = num(tasks[k]);
  }
  return c;
}

const taskList = (job) => (Array.isArray(job && job.tasks) ? job.tasks.filter(isObj) : []);

// ---- header ----
function totalsHtml(t) {
  t = isObj(t) ? t : {};
  const stat = (v, label) => `<span class="stat"><b>${v}</b> ${label}</span>`;
  return stat(fmtRate(t.frames_per_s), 'frames/s') + stat(int(t.queue_frames), 'queued frames') +
    stat(int(t.jobs_active), 'active jobs') +
    stat(`${int(t.leases_granted)} / ${int(t.leases_expired)}`, 'leases granted / expired') +
    stat(int(t.evictions), 'evictions') + stat(int(t.wasted_frames), 'wasted frames');
}

// ---- overview ----
function jobRowHtml(j, now) {
  const st = String(j.state || '');
  const eta = TERMINAL.has(st) ? '—' : fmtDuration(j.eta_s);
  const err = j.error ? `<div class="err">${esc(j.error)}</div>` : '';
  return `<tr data-job-id="${esc(j.id)}" data-frames-done="${int(j.frames_done)}" data-state="${esc(st)}">` +
    `<td class="mono">${jobLink(j.id)}</td><td>${badge(st)}</td>` +
    `<td class="input"><span title="${esc(j.input_url)}">${esc(fileName(j.input_url)) || '—'}</span>${err}</td>` +
    `<td class="prog">${progressHtml(j.frames_done, j.frames_total)}</td>` +
    `<td class="num">${fmtRate(j.frames_per_s)}</td><td class="num">${eta}</td>` +
    `<td>${fmtTime(j.created_ms, now)}</td></tr>`;
}

function jobsTableHtml(jobs, now) {
  const list = Array.isArray(jobs) ? jobs.filter(isObj) : [];
  const rows = list.length ? list.map((j) => jobRowHtml(j, now)).join('')
    : '<tr class="empty"><td colspan="7">No jobs yet</td></tr>';
  return '<table class="grid"><thead><tr><th>Job</th><th>State</th><th>Input</th><th>Progress</th>' +
    '<th class="num">frames/s</th><th class="num">ETA</th><th>Created</th></tr></thead>' +
    `<tbody>${rows}</tbody></table>`;
}

function leaseHtml(l) {
  if (!isObj(l)) return '—';
  const kind = l.kind && l.kind !== 'segment' ? ` ${esc(l.kind)}` : '';
  const range = num(l.end) > num(l.from) ? ` frames ${int(l.from)}–${int(l.end)}` : '';
  return `<span title="lease ${esc(l.lease_id)}, ${int(l.frames_done)} frames done">` +
    `${jobLink(l.job_id)} #${int(l.task)}${kind}${range}</span>`;
}

function workerRowHtml(w, now) {
  const hw = w.gpu ? 'GPU' : 'CPU';
  const threads = num(w.threads) > 0 ? ` <span class="muted">×${int(w.threads)}</span>` : '';
  const cap = num(w.model_fps) > 0
    ? ` <span class="muted" title="model frames/s at 640x360, measured at start-up">· ${fmtRate(w.model_fps)} f/s@360p</span>` : '';
  return `<tr data-worker-id="${esc(w.id)}" data-state="${esc(w.state)}">` +
    `<td class="mono">${swatch(w.id)}${esc(w.id)}</td><td>${esc(w.hostname) || '—'}</td>` +
    `<td>${hw}${threads}${cap}</td><td>${badge(w.state)}</td><td class="num">${fmtRate(w.frames_per_s)}</td>` +
    `<td class="mono">${leaseHtml(w.lease)}</td><td>${fmtAgo(w.last_seen_ms, now)}</td>` +
    `<td class="num">${int(w.evictions)}</td><td class="num">${int(w.frames_committed)}</td></tr>`;
}

function workersTableHtml(workers, now) {
  const list = Array.isArray(workers) ? workers.filter(isObj) : [];
  const rows = list.length ? list.map((w) => workerRowHtml(w, now)).join('')
    : '<tr class="empty"><td colspan="9">No workers connected</td></tr>';
  return '<table class="grid"><thead><tr><th>Worker</th><th>Host</th><th>Device</th><th>State</th>' +
    '<th class="num">frames/s</th><th>Current lease</th><th>Last heartbeat</th><th class="num">Evictions</th>' +
    `<th class="num">Frames committed</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function throughputChartHtml(samples, now) {
  const W = 640, H = 180, L = 40, R = 12, T = 10, B = 22, SPAN = 600000;
  const pts = (Array.isArray(samples) ? samples : [])
    .filter((s) => Array.isArray(s) && Number.isFinite(Number(s[0])) && Number.isFinite(Number(s[1])))
    .map((s) => [Number(s[0]), Math.max(0, Number(s[1]))]);
  const end = num(now) || (pts.length ? pts[pts.length - 1][0] : Date.now());
  const start = end - SPAN;
  const vis = pts.filter((p) => p[0] >= start);
  const ymax = niceMax(vis.reduce((m, p) => Math.max(m, p[1]), 0));
  const x = (t) => (L + (Math.min(1, (t - start) / SPAN)) * (W - L - R)).toFixed(1);
  const y = (v) => (T + (1 - v / ymax) * (H - T - B)).toFixed(1);
  let g = '';
  for (const f of [0, 0.5, 1]) {
    const v = ymax * f;
    g += `<line class="gridline" x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}"/>` +
      `<text class="axis" x="${L - 6}" y="${num(y(v)) + 4}" text-anchor="end">${Number(v.toFixed(2))}</text>`;
  }
  for (const [f, lab, anchor] of [[0, '−10m', 'start'], [0.5, '−5m', 'middle'], [1, 'now', 'end']]) {
    g += `<text class="axis" x="${x(start + f * SPAN)}" y="${H - 5}" text-anchor="${anchor}">${lab}</text>`;
  }
  let body;
  if (vis.length >= 2) {
    const line = vis.map((p, i) => `${i ? 'L' : 'M'}${x(p[0])},${y(p[1])}`).join('');
    body = `<path class="area" d="${line}L${x(vis[vis.length - 1][0])},${y(0)}L${x(vis[0][0])},${y(0)}Z"/>` +
      `<path class="line" d="${line}"/>`;
  } else {
    body = `<text class="nodata" x="${(L + W - R) / 2}" y="${(T + H - B) / 2}" text-anchor="middle">No throughput samples yet</text>`;
  }
  const cur = vis.length ? vis[vis.length - 1][1] : 0;
  return `<svg id="throughput-chart" class="chart" viewBox="0 0 ${W} ${H}" role="img" ` +
    `aria-label="Cluster throughput in frames per second over the last 10 minutes">` +
    `<title>Throughput: ${cur.toFixed(1)} frames/s now, axis max ${ymax}</title>${g}${body}</svg>`;
}

// The autoscaler's state and its latest decisions, newest first (only when it is enabled).
function autoscalerHtml(a, now) {
  if (!isObj(a) || !a.enabled) return '';
  const ds = Array.isArray(a.decisions) ? a.decisions.filter(isObj).slice(-8).reverse() : [];
  const rows = ds.length ? ds.map((d) =>
    `<tr data-direction="${esc(d.direction)}"><td>${esc(fmtAgo(num(d.last_ms || d.at_ms), now))}</td>` +
    `<td>${badge(d.direction)}</td><td class="num">${int(d.current)} → ${int(d.desired)}</td>` +
    `<td>${esc(d.last_reason || d.reason)}${num(d.looks) > 1 ? ` <span class="muted">(×${int(d.looks)})</span>` : ''}</td></tr>`).join('')
    : '<tr class="empty"><td colspan="4">No decision yet</td></tr>';
  return `<section class="card" id="autoscaler"><h2>Autoscaler <span class="muted">` +
    `${int(a.current)} running, ${int(a.desired)} wanted, ${fmtRate(a.per_worker_fps)} frames/s per worker (${esc(a.rate_source)}), ` +
    `${int(a.started_total)} started, ${int(a.died_total)} died</span></h2>` +
    `<div class="scroll"><table class="grid"><thead><tr><th>When</th><th>Decision</th><th class="num">Workers</th><th>Why</th></tr></thead>` +
    `<tbody>${rows}</tbody></table></div></section>`;
}

function overviewHtml(ov, now, scaler) {
  ov = isObj(ov) ? ov : {};
  return `<section class="card"><h2>Throughput <span class="muted">frames/s, last 10 minutes</span></h2>` +
    `${throughputChartHtml(ov.throughput, now)}</section>` +
    `<section class="card"><h2>Jobs</h2><div class="scroll">${jobsTableHtml(ov.jobs, now)}</div></section>` +
    `<section class="card"><h2>Workers</h2><div class="scroll">${workersTableHtml(ov.workers, now)}</div></section>` +
    autoscalerHtml(scaler, now);
}

// ---- job page ----
const MARKS = {
  retried: (cx, cy) => `<circle class="mk mk-retried" cx="${cx}" cy="${cy}" r="5"/>`,
  stolen: (cx, cy) => `<polygon class="mk mk-stolen" points="${cx - 5},${cy + 4.5} ${cx + 5},${cy + 4.5} ${cx},${cy - 4.5}"/>`,
  speculative: (cx, cy) => `<polygon class="mk mk-speculative" points="${cx},${cy - 5} ${cx + 5},${cy} ${cx},${cy + 5} ${cx - 5},${cy}"/>`,
  released: (cx, cy) => `<rect class="mk mk-released" x="${cx - 4}" y="${cy - 4}" width="8" height="8"/>`,
};

function taskEvents(t) {
  const ev = [], errs = Array.isArray(t.errors) ? t.errors : [];
  const of = t.origin_task !== null && t.origin_task !== undefined ? ` #${int(t.origin_task)}` : '';
  if (num(t.failures) > 0 || num(t.attempts) > 1) {
    const last = errs.length ? `; last error: ${errs[errs.length - 1]}` : '';
    ev.push(['retried', `retried (${int(t.attempts)} attempts, ${int(t.failures)} failures${last})`]);
  }
  if (t.origin === 'stolen') ev.push(['stolen', `stolen: split off task${of || ' ?'}`]);
  if (t.origin === 'speculative') ev.push(['speculative', `speculative copy of task${of || ' ?'}`]);
  if (num(t.speculations) > 0) {
    const who = isObj(t.spec) ? ` (racing on ${t.spec.worker_id})` : '';
    ev.push(['speculative', `raced by ${int(t.speculations)} speculative attempt(s), first commit wins${who}`]);
  }
  if (num(t.releases) > 0) ev.push(['released', `lease released ${int(t.releases)}× (eviction or drain)`]);
  return ev;
}

function segmentMapHtml(job) {
  const F = num(job.frames_total);
  if (!(F > 0)) return '<p class="muted">The frame count is unknown until the input has been probed.</p>';
  const W = 1000, BY = 24, BH = 30, H = 74;
  const X = (f) => (Math.min(F, Math.max(0, num(f))) / F) * W;
  const rect = (a, b, extra) => `x="${X(a).toFixed(2)}" y="${BY}" width="${Math.max(0, X(b) - X(a)).toFixed(2)}" height="${BH}" ${extra || ''}`;
  const workers = new Set();
  let outlines = '', chunks = '', leases = '', marks = '';
  for (const t of taskList(job)) {
    const s = num(t.start), e = num(t.end), idx = int(t.index), ranged = e > s;
    const label = `task #${idx} (${esc(t.kind || 'task')}${ranged ? `, frames ${int(s)}–${int(e)}` : ''})`;
    if (ranged) {
      outlines += `<rect class="seg-task ${stateClass(t.state)}" ${rect(s, e)}><title>${label}: ${esc(t.state)}, ` +
        `committed to ${int(t.committed_until)}</title></rect>`;
      const cs = Array.isArray(t.chunks) ? t.chunks.filter(isObj) : [];
      for (const c of cs) {
        workers.add(String(c.worker_id || ''));
        chunks += `<rect class="chunk" ${rect(c.start, c.end, `fill="${workerColor(c.worker_id)}"`)}>` +
          `<title>frames ${int(c.start)}–${int(c.end)} by ${esc(c.worker_id || 'unknown')} (task #${idx})</title></rect>`;
      }
      if (!cs.length && num(t.committed_until) > s) {
        const wid = t.worker_id || '';
        if (wid) workers.add(String(wid));
        chunks += `<rect class="chunk" ${rect(s, Math.min(e, num(t.committed_until)), `fill="${wid ? workerColor(wid) : '#6b7785'}"`)}>` +
          `<title>frames ${int(s)}–${int(Math.min(e, num(t.committed_until)))} committed (task #${idx})</title></rect>`;
      }
      const l = t.lease;
      if (isObj(l) && t.state !== 'done') {
        const from = Math.max(s, num(l.from)), to = Math.min(e, from + num(l.frames_done)), col = workerColor(l.worker_id);
        workers.add(String(l.worker_id || ''));
        leases += `<g class="inflight"><title>${label}: leased to ${esc(l.worker_id || '?')}, frames ${int(from)}–${int(to)} ` +
          `of ${int(from)}–${int(e)} done in this lease</title>` +
          `<rect class="lease-range" ${rect(from, e, `stroke="${col}"`)}/>` +
          `<rect class="lease-done" ${rect(from, to, `fill="${col}"`)}/>` +
          `<rect class="lease-stripes" ${rect(from, to, 'fill="url(#fw-stripes)"')}/></g>`;
      }
    }
    const ev = taskEvents(t);
    if (ev.length) {
      const span = ev.length * 13;
      const x0 = ranged ? X(s) : (t.kind === 'assemble' ? W - span : 0);
      const x1 = ranged ? Math.max(X(e), x0 + 2) : x0 + span;
      const base = Math.min(W - span, x0) + 6;
      marks += `<g class="mark"><title>${label}: ${esc(ev.map((m) => m[1]).join('; '))}</title>` +
        `<line class="mark-range" x1="${(x0 + 1.5).toFixed(2)}" x2="${Math.max(x0 + 2, x1 - 1.5).toFixed(2)}" y1="20" y2="20"/>` +
        ev.map((m, i) => MARKS[m[0]](Math.round((base + i * 13) * 10) / 10, 10)).join('') + '</g>';
    }
  }
  let axis = '';
  for (const f of [0, 0.25, 0.5, 0.75, 1]) {
    const anchor = f === 0 ? 'start' : f === 1 ? 'end' : 'middle';
    axis += `<text class="axis" x="${(f * W).toFixed(1)}" y="${H - 4}" text-anchor="${anchor}">${int(f * F)}</text>`;
  }
  const legendWorkers = [...workers].filter(Boolean).sort()
    .map((w) => `<span class="key">${swatch(w)}${esc(w)}</span>`).join('');
  const key = (k, text) => `<span class="key"><svg class="key-svg" viewBox="0 0 12 12">${MARKS[k](6, 6)}</svg>${text}</span>`;
  return `<svg class="segmap" viewBox="0 0 ${W} ${H}" role="img" aria-label="Segment map of ${int(F)} frames">` +
    '<defs><pattern id="fw-stripes" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">' +
    '<rect width="4" height="8" fill="rgba(255,255,255,0.45)"/></pattern></defs>' +
    `<rect class="seg-bg" x="0" y="${BY}" width="${W}" height="${BH}"><title>pending frames</title></rect>` +
    `${outlines}${chunks}${leases}${marks}${axis}</svg>` +
    `<div class="legend">${legendWorkers || '<span class="muted">no frames committed yet</span>'}</div>` +
    '<div class="legend"><span class="key"><i class="sw sw-pending"></i>pending</span>' +
    '<span class="key"><i class="sw sw-inflight"></i>in flight</span>' +
    key('retried', 'retried') + key('stolen', 'stolen') + key('speculative', 'speculative') + key('released', 'released') + '</div>';
}

// Links to token-guarded plain-text endpoints (task logs) carry the page's ?token=.
function withToken(href) {
  const t = typeof location !== 'undefined' ? new URLSearchParams(location.search).get('token') : '';
  return t ? `${href}?token=${encodeURIComponent(t)}` : href;
}
function logLink(t, label) {
  return typeof t.log_url === 'string' && t.log_url.startsWith('/api/v1/') && num(t.attempts) > 0
    ? `<a class="log" href="${esc(withToken(t.log_url))}" target="_blank" rel="noopener">${label}</a>` : '';
}
function tasksTableHtml(job) {
  const tasks = taskList(job).slice().sort((a, b) => num(a.index) - num(b.index));
  const rows = tasks.map((t) => {
    const ranged = num(t.end) > num(t.start);
    const origin = esc(t.origin || 'planned') +
      (t.origin_task !== null && t.origin_task !== undefined ? ` of #${int(t.origin_task)}` : '');
    const lw = isObj(t.lease) ? t.lease.worker_id : '';
    const worker = t.worker_id ? swatch(t.worker_id) + esc(t.worker_id)
      : lw ? `${swatch(lw)}${esc(lw)} <span class="muted">(leased)</span>` : '—';
    const errs = Array.isArray(t.errors) ? t.errors : [];
    const last = errs.length ? `<span class="err">${esc(errs[errs.length - 1])}</span>` : '';
    return `<tr data-task-index="${int(t.index)}"><td class="num">${int(t.index)}</td><td>${esc(t.kind)}</td>` +
      `<td class="mono">${ranged ? `${int(t.start)}–${int(t.end)}` : '—'}</td>` +
      `<td class="num">${ranged ? int(t.committed_until) : '—'}</td><td>${badge(t.state)}</td>` +
      `<td class="num">${int(t.attempts)}</td><td class="num">${int(t.failures)}</td><td>${origin}</td>` +
      `<td class="mono">${worker}</td><td class="lasterr">${last}</td><td>${logLink(t, 'log')}</td></tr>`;
  }).join('') || '<tr class="empty"><td colspan="11">No tasks yet</td></tr>';
  return '<table class="grid"><thead><tr><th class="num">#</th><th>Kind</th><th>Frames</th>' +
    '<th class="num">Committed to</th><th>State</th><th class="num">Attempts</th><th class="num">Failures</th>' +
    `<th>Origin</th><th>Worker</th><th>Last error</th><th>Log</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function failuresHtml(job) {
  const items = [];
  if (job.error) items.push(`<li><span class="tag">job</span><span class="err">${esc(job.error)}</span></li>`);
  for (const t of taskList(job).slice().sort((a, b) => num(a.index) - num(b.index))) {
    for (const e of Array.isArray(t.errors) ? t.errors : []) {
      items.push(`<li><span class="tag">task #${int(t.index)}</span><code>${esc(e)}</code> ${logLink(t, 'worker log')}</li>`);
    }
  }
  return items.length ? `<ul class="failures">${items.join('')}</ul>` : '<p class="muted">No failures recorded.</p>';
}

function weightsHtml(ws) {
  const list = Array.isArray(ws) ? ws.map(num) : [];
  if (!list.length) return '—';
  const max = list.reduce((m, v) => Math.max(m, Math.abs(v)), 0) || 1;
  const bars = list.map((v, i) => {
    const h = (Math.abs(v) / max) * 26;
    return `<rect x="${i * 8}" y="${(28 - h).toFixed(2)}" width="6" height="${Math.max(0.5, h).toFixed(2)}">` +
      `<title>style ${i}: ${v.toFixed(3)}</title></rect>`;
  }).join('');
  return `<svg class="weights" viewBox="0 0 ${list.length * 8} 28" width="${list.length * 8}" height="28">${bars}</svg>`;
}

function mediaHtml(m) {
  if (!isObj(m)) return '<span class="muted">not probed yet</span>';
  const audio = num(m.audio_streams);
  return `${int(m.width)}×${int(m.height)} · ${Number(num(m.fps).toFixed(3))} fps · ${fmtDuration(m.duration_s)} · ` +
    `${esc(m.video_codec || '?')} in ${esc(m.container || '?')} · ${audio ? `${audio} audio stream${audio > 1 ? 's' : ''}` : 'no audio'}`;
}

function summaryHtml(job, now) {
  const p = isObj(job.params) ? job.params : {};
  const c = taskCounts(job.tasks);
  const done = TERMINAL.has(job.state);
  const row = (k, v) => `<dt>${k}</dt><dd>${v}</dd>`;
  return progressHtml(job.frames_done, job.frames_total) + '<dl class="facts">' +
    row('State', badge(job.state)) +
    row('Input', `<span class="mono break">${esc(job.input_url) || '—'}</span>`) +
    row('Output', `<span class="mono break">${esc(job.output_url) || '—'}</span>`) +
    row('Created', fmtTime(job.created_ms, now)) + row('Finished', fmtTime(job.finished_ms, now)) +
    row('Media', mediaHtml(job.media)) +
    row('Rate', `${fmtRate(job.frames_per_s)} frames/s · ETA ${done ? '—' : fmtDuration(job.eta_s)} · ` +
      `${int(job.workers_active)} worker${num(job.workers_active) === 1 ? '' : 's'} active`) +
    row('Tasks', `${c.pending} pending · ${c.leased} leased · ${c.done} done · ${c.failed} failed`) +
    row('Params', `${Number(num(p.segment_seconds).toFixed(2))} s segments · ${int(job.chunk_frames)} frames per chunk · ` +
      `max size ${num(p.max_size) > 0 ? int(p.max_size) + ' px' : 'original'} · CRF ${int(p.crf)}`) +
    row('Style weights', weightsHtml(p.style_weights)) + '</dl>';
}

function jobPageHtml(id, job, now, ui) {
  ui = ui || {};
  const back = '<div class="crumbs"><a href="#/">← Overview</a></div>';
  const alert = (m) => (m ? `<div class="alert">${esc(m)}</div>` : '');
  if (!isObj(job)) {
    return back + `<h1 class="mono">${esc(id)}</h1>` + (ui.error ? alert(ui.error) : '<p class="muted">Loading job…</p>');
  }
  const cancel = TERMINAL.has(job.state) ? ''
    : `<button type="button" class="danger" data-action="cancel" data-job="${esc(job.id || id)}"${ui.cancelling ? ' disabled' : ''}>` +
      `${ui.cancelling ? 'Cancelling…' : 'Cancel job'}</button>`;
  return back + `<div class="job-head"><h1 class="mono">${esc(job.id || id)}</h1>${badge(job.state)}${cancel}</div>` +
    alert(ui.cancelMsg) + alert(ui.error) +
    `<section class="card"><h2>Summary</h2>${summaryHtml(job, now)}</section>` +
    `<section class="card"><h2>Segment map</h2>${segmentMapHtml(job)}</section>` +
    `<section class="card"><h2>Tasks</h2><div class="scroll">${tasksTableHtml(job)}</div></section>` +
    `<section class="card"><h2>Failures</h2>${failuresHtml(job)}</section>`;
}

// ---- DOM patching: update in place, keep unchanged nodes ----
function syncAttrs(a, b) {
  for (const { name } of Array.from(a.attributes)) if (!b.hasAttribute(name)) a.removeAttribute(name);
  for (const { name, value } of Array.from(b.attributes)) if (a.getAttribute(name) !== value) a.setAttribute(name, value);
}
function syncChildren(a, b) {
  const an = Array.from(a.childNodes), bn = Array.from(b.childNodes);
  bn.forEach((y, i) => {
    const x = an[i];
    if (!x) a.appendChild(y);
    else if (x.nodeType !== y.nodeType || x.nodeName !== y.nodeName) a.replaceChild(y, x);
    else if (x.nodeType === 1) { syncAttrs(x, y); syncChildren(x, y); }
    else if (x.nodeValue !== y.nodeValue) x.nodeValue = y.nodeValue;
  });
  for (let i = an.length - 1; i >= bn.length; i--) a.removeChild(an[i]);
}
function patch(el, html) {
  if (!el) return;
  const tpl = document.createElement('template');
  tpl.innerHTML = html;
  syncChildren(el, tpl.content);
}

// ---- app wiring ----
function init() {
  const TOKEN = new URLSearchParams(location.search).get('token') || '';
  const S = { ov: null, ovErr: '', live: false, job: null, jobFor: '', jobErr: '', jobMissing: '', jobBusy: false,
    polling: false, cancelMsg: '', cancelling: false };
  const $ = (id) => document.getElementById(id);

  function route() {
    const m = /^#?\/jobs\/(.+)$/.exec(location.hash);
    if (!m) return { page: 'overview', id: '' };
    try { return { page: 'job', id: decodeURIComponent(m[1]) }; } catch (_) { return { page: 'job', id: m[1] }; }
  }

  async function api(path, method) {
    const headers = { Accept: 'application/json' };
    if (TOKEN) headers.Authorization = 'Bearer ' + TOKEN;
    const res = await fetch(path, { method: method || 'GET', headers, cache: 'no-store' });
    const text = await res.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
    if (!res.ok) {
      const err = new Error((isObj(body) && body.error) || text.trim() || `${res.status} ${res.statusText}`);
      err.status = res.status;
      throw err;
    }
    return body;
  }

  function setConn(live) {
    S.live = live;
    const el = $('connection');
    if (!el) return;
    el.textContent = live ? 'live' : 'reconnecting…';
    el.className = 'conn ' + (live ? 'on' : 'off');
  }

  function render() {
    const ov = isObj(S.ov) ? S.ov : {};
    const now = num(ov.now_ms) || Date.now();
    patch($('totals'), totalsHtml(ov.totals));
    patch($('notice'), S.ovErr ? `<div class="alert">${esc(S.ovErr)}</div>` : '');
    const r = route();
    if (r.page === 'job') {
      document.title = `${r.id} · framewise`;
      const job = S.jobFor === r.id ? S.job : null;
      patch($('app'), jobPageHtml(r.id, job, now,
        { error: S.jobFor === r.id ? S.jobErr : '', cancelMsg: S.cancelMsg, cancelling: S.cancelling }));
    } else {
      document.title = 'framewise';
      patch($('app'), overviewHtml(ov, now, S.scaler));
    }
  }

  async function refreshJob(force) {
    const r = route();
    if (r.page !== 'job' || (S.jobBusy && !force) || (S.jobMissing === r.id && !force)) return;
    S.jobBusy = true;
    try {
      const j = await api('/api/v1/jobs/' + encodeURIComponent(r.id));
      if (route().id === r.id) { S.job = isObj(j) ? j : null; S.jobFor = r.id; S.jobErr = isObj(j) ? '' : 'Unexpected response'; }
    } catch (e) {
      if (route().id === r.id) {
        S.jobFor = r.id;
        if (e.status === 404) { S.job = null; S.jobMissing = r.id; S.jobErr = `Job ${r.id} not found.`; }
        else S.jobErr = `Could not load job: ${e.message}`;
      }
    } finally {
      S.jobBusy = false;
    }
    render();
  }

  function onOverview(data) {
    if (!isObj(data)) return;
    S.ov = data;
    S.ovErr = '';
    render();
    refreshJob(false);
  }

  async function poll() {
    if (S.polling) return;
    S.polling = true;
    try { onOverview(await api('/api/v1/overview')); } catch (e) {
      const auth = e.status === 401 || e.status === 403;
      S.ovErr = auth ? `Not authorized (${e.message}). Open the dashboard with ?token=<viewer token> in the URL.` : '';
      if (auth) render(); else console.warn('overview:', e.message);
    }
    finally { S.polling = false; }
  }

  function connect() {
    if (typeof EventSource === 'undefined') return;
    const es = new EventSource('/api/v1/events' + (TOKEN ? '?token=' + encodeURIComponent(TOKEN) : ''));
    const handle = (ev) => {
      let d = null;
      try { d = JSON.parse(ev.data); } catch (_) { return; }
      onOverview(d);
    };
    es.addEventListener('overview', handle);
    es.onmessage = handle;
    es.onopen = () => setConn(true);
    es.onerror = () => {
      setConn(false);
      // The browser retries by itself unless the server refused the stream.
      if (es.readyState === 2) { es.close(); setTimeout(connect, 3000); }
    };
  }

  async function cancelJob(id) {
    if (!id || S.cancelling) return;
    S.cancelling = true;
    S.cancelMsg = '';
    render();
    try {
      await api(`/api/v1/jobs/${encodeURIComponent(id)}/cancel`, 'POST');
    } catch (e) {
      S.cancelMsg = `Cancel failed: ${e.message}`;
    } finally {
      S.cancelling = false;
    }
    render();
    await refreshJob(true);
  }

  $('app').addEventListener('click', (ev) => {
    const btn = ev.target && ev.target.closest ? ev.target.closest('[data-action="cancel"]') : null;
    if (!btn) return;
    ev.preventDefault();
    cancelJob(btn.getAttribute('data-job'));
  });
  window.addEventListener('hashchange', () => {
    S.cancelMsg = '';
    S.jobMissing = '';
    if (S.jobFor !== route().id) { S.job = null; S.jobFor = ''; S.jobErr = ''; }
    render();
    window.scrollTo(0, 0);
    refreshJob(false);
  });

  if (TOKEN) { // plain links to token-guarded endpoints (e.g. /metrics) carry the token too
    for (const a of document.querySelectorAll('a[data-with-token]')) a.href = `${a.getAttribute('href')}?token=${encodeURIComponent(TOKEN)}`;
  }
  // The autoscaler's decisions are not in the overview stream: polled, and only while enabled.
  async function refreshScaler() {
    if (S.scalerOff || route().page !== 'overview') return;
    try {
      const a = await api('/api/v1/autoscaler');
      S.scaler = isObj(a) ? a : null;
      if (S.scaler && !S.scaler.enabled) S.scalerOff = true;
      render();
    } catch (e) { console.warn('autoscaler:', e.message); }
  }

  setConn(false);
  render();
  poll();
  connect();
  refreshScaler();
  setInterval(() => { if (!S.live) poll(); }, 2000); // fallback while the stream is down
  setInterval(refreshScaler, 3000);
}

if (typeof window !== 'undefined' && typeof document !== 'undefined') init();
if (typeof module !== 'undefined' && module.exports) {
  module.exports = { esc, num, fmtDuration, fmtAgo, fmtTime, fileName, pct, workerColor, niceMax, taskCounts,
    totalsHtml, jobsTableHtml, workersTableHtml, throughputChartHtml, overviewHtml, autoscalerHtml, segmentMapHtml,
    tasksTableHtml, failuresHtml, summaryHtml, jobPageHtml };
}
