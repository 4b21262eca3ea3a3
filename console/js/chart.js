// Hand-made SVG charts (no library): a running-balance step line, stacked bars and horizontal
// bars. Heights come from decimal.position() (exact BigInt arithmetic, then a pixel count);
// stacks are exact decimal sums; axis labels are exact decimal strings. Each chart is an
// <svg role="img"> named by its <title> and described by its <desc>; the page shows the same
// figures in a table next to it.

import * as dec from './decimal.js';
import { s, h, id } from './dom.js';

/** Series colours (distinct at common colour-vision deficiencies, with a legend in text). */
export const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f', '#d62728'];

const M = { top: 12, right: 16, bottom: 34, left: 64 };

function frame(width, height, title, desc) {
  const tid = id('chart-title');
  const did = id('chart-desc');
  const svg = s('svg', {
    class: 'chart', width, height, viewBox: `0 0 ${width} ${height}`,
    role: 'img', 'aria-labelledby': `${tid} ${did}`, focusable: 'false',
  });
  svg.append(s('title', { id: tid }, title), s('desc', { id: did }, desc));
  return svg;
}

function yAxis(svg, tickValues, y, x0, x1) {
  const g = s('g', { class: 'axis y', 'aria-hidden': 'true' });
  for (const t of tickValues) {
    const py = y(t);
    g.append(
      s('line', { x1: x0, x2: x1, y1: py, y2: py, class: dec.sign(t) === 0 ? 'zero' : 'grid' }),
      s('text', { x: x0 - 6, y: py + 4, 'text-anchor': 'end' }, t),
    );
  }
  svg.append(g);
}

function timeTicks(t0, t1, n) {
  if (t1 <= t0) return [t0];
  const out = [];
  for (let i = 0; i <= n; i += 1) out.push(t0 + ((t1 - t0) * i) / n);
  return out;
}

function timeLabel(ms, spanMs) {
  const iso = new Date(ms).toISOString();
  return spanMs < 2 * 86400000 ? iso.slice(11, 16) : iso.slice(0, 10);
}

/**
 * Running balance over time: a step line through `points` ({t: ms, v: decimal string,
 * kind}, in time order), a marker per entry coloured by kind, the zero line when in range.
 */
export function balanceChart({ points, width, height = 220, title, kinds }) {
  const W = Math.max(260, Math.floor(width));
  const first = points[0];
  const lastP = points[points.length - 1];
  const desc = points.length
    ? `${points.length} entries from ${new Date(first.t).toISOString().slice(0, 16).replace('T', ' ')} to ${new Date(lastP.t).toISOString().slice(0, 16).replace('T', ' ')} UTC; balance from ${first.v} to ${lastP.v} credits.`
    : 'No entries in this range.';
  const svg = frame(W, height, title, desc);
  if (!points.length) return svg;
  const [lo, hi] = dec.extent(points.map((p) => p.v));
  const yt = dec.ticks(lo, hi, 4);
  const ylo = yt[0];
  const yhi = yt[yt.length - 1];
  const x0 = M.left;
  const x1 = W - M.right;
  const y0 = height - M.bottom;
  const y1 = M.top;
  const y = (v) => y0 - dec.position(v, ylo, yhi, y0 - y1);
  const t0 = points[0].t;
  const t1 = points[points.length - 1].t;
  const x = (t) => (t1 === t0 ? (x0 + x1) / 2 : x0 + ((t - t0) * (x1 - x0)) / (t1 - t0));
  yAxis(svg, yt, y, x0, x1);
  const gx = s('g', { class: 'axis x', 'aria-hidden': 'true' });
  const n = W < 500 ? 2 : 4;
  const tt = timeTicks(t0, t1, t1 === t0 ? 0 : n);
  tt.forEach((t, i) => {
    const anchor = tt.length > 1 && i === 0 ? 'start' : tt.length > 1 && i === tt.length - 1 ? 'end' : 'middle';
    gx.append(s('text', { x: x(t), y: height - 12, 'text-anchor': anchor }, timeLabel(t, t1 - t0)));
  });
  svg.append(gx);
  let d = '';
  points.forEach((p, i) => {
    const px = x(p.t).toFixed(2);
    const py = y(p.v).toFixed(2);
    d += i === 0 ? `M${px},${py}` : `H${px}V${py}`;
  });
  svg.append(s('path', { d, class: 'line', fill: 'none' }));
  const g = s('g', { class: 'marks', 'aria-hidden': 'true' });
  for (const p of points) {
    const k = kinds.indexOf(p.kind);
    g.append(s('circle', { cx: x(p.t).toFixed(2), cy: y(p.v).toFixed(2), r: 3, fill: PALETTE[k < 0 ? 8 : k] }));
  }
  svg.append(g);
  return svg;
}

/**
 * Stacked bars: one bar per category (e.g. a day), one segment per series (e.g. an asset).
 * series: [{name, values: {category: decimal string}}]. Segment heights are exact: each
 * top is the exact running sum of the segments below it.
 */
export function stackedBars({ categories, series, width, height = 240, title, desc }) {
  const W = Math.max(260, Math.floor(width));
  const svg = frame(W, height, title, desc);
  if (!categories.length) return svg;
  const totals = categories.map((c) => dec.sum(series.map((se) => se.values[c] || '0')));
  const [lo, hi] = dec.extent(totals.concat(['0']));
  const yt = dec.ticks(lo, hi, 4);
  const ylo = yt[0];
  const yhi = yt[yt.length - 1];
  const x0 = M.left;
  const x1 = W - M.right;
  const y0 = height - M.bottom;
  const y1 = M.top;
  const y = (v) => y0 - dec.position(v, ylo, yhi, y0 - y1);
  yAxis(svg, yt, y, x0, x1);
  const band = (x1 - x0) / categories.length;
  const bw = Math.max(1, Math.min(40, band * 0.7));
  const g = s('g', { class: 'bars' });
  const every = Math.ceil(categories.length / Math.max(1, Math.floor((x1 - x0) / 80)));
  categories.forEach((c, i) => {
    const cx = x0 + band * i + band / 2;
    let base = '0';
    series.forEach((se, k) => {
      const v = se.values[c];
      if (!v || dec.sign(v) === 0) return;
      const top = dec.add(base, v);
      const ya = y(base);
      const yb = y(top);
      g.append(s('rect', {
        x: (cx - bw / 2).toFixed(2), y: Math.min(ya, yb).toFixed(2), width: bw.toFixed(2),
        height: Math.max(0.5, Math.abs(ya - yb)).toFixed(2), fill: PALETTE[k % PALETTE.length],
        dataset: { category: c, series: se.name, value: v },
      }, s('title', {}, `${c} · ${se.name}: ${v}`)));
      base = top;
    });
    if (i % every === 0) {
      svg.append(s('text', { x: cx, y: height - 12, 'text-anchor': 'middle', class: 'axis-label', 'aria-hidden': 'true' }, c.length === 10 ? c.slice(5) : c));
    }
  });
  svg.append(g);
  return svg;
}

/** Horizontal bars for a ranked list: items [{label, value: decimal string}]. */
export function hbars({ items, width, title, desc, barHeight = 22 }) {
  const W = Math.max(260, Math.floor(width));
  const height = items.length * (barHeight + 6) + 8;
  const svg = frame(W, height, title, desc);
  if (!items.length) return svg;
  const [, hi] = dec.extent(items.map((i) => i.value).concat(['0']));
  const labelW = Math.min(200, Math.floor(W * 0.38));
  const valueW = 110;
  const span = Math.max(10, W - labelW - valueW - 16);
  items.forEach((it, i) => {
    const yy = 4 + i * (barHeight + 6);
    const w = dec.position(dec.sign(it.value) < 0 ? '0' : it.value, '0', hi, span);
    svg.append(
      s('text', { x: labelW - 6, y: yy + barHeight * 0.7, 'text-anchor': 'end', class: 'bar-label' }, clip(it.label, Math.floor(labelW / 7))),
      s('rect', { x: labelW, y: yy, width: Math.max(1, w).toFixed(2), height: barHeight, fill: PALETTE[i % PALETTE.length] }),
      s('text', { x: labelW + w + 6, y: yy + barHeight * 0.7, class: 'bar-value' }, it.value),
    );
  });
  return svg;
}

function clip(text, n) {
  return text.length > n ? `${text.slice(0, Math.max(1, n - 1))}…` : text;
}

/** A legend: coloured swatches with names (text, so colour is never the only cue). */
export function legend(names) {
  return h('ul', { class: 'legend' }, names.map((n, i) => h('li', {},
    h('span', { class: `swatch c${i % PALETTE.length}`, 'aria-hidden': 'true' }), n)));
}

/**
 * Renders `draw(width)` into `container` now and again whenever the container's width
 * changes (a phone turned, a window resized). Returns a function that stops watching.
 */
export function mount(container, draw) {
  let last = -1;
  const render = () => {
    const w = Math.floor(container.clientWidth || 600);
    if (w === last) return;
    last = w;
    container.replaceChildren(draw(w));
  };
  render();
  const ro = new ResizeObserver(() => render());
  ro.observe(container);
  return () => ro.disconnect();
}
