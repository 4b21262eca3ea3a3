// The console's accessibility basics, checked in the page (tests/console_a11y.rs runs it):
// returns a list of problems, empty when every check passes. Checks: the document's language
// and title; one h1 and no skipped heading level in the content; every form control, button,
// link and named-image has an accessible name; every table has a name and column headers;
// ids are unique; the live region exists; text contrast at least 4.5:1 (3:1 for large text,
// WCAG 2.1 AA 1.4.3) against the background it is drawn on.
const problems = [];
const say = (what, el) => problems.push(`${what}: ${el ? el.outerHTML.slice(0, 160) : ''}`);
const visible = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
const named = (el) => {
  if ((el.getAttribute('aria-label') || '').trim()) return true;
  const by = el.getAttribute('aria-labelledby');
  if (by && by.split(/\s+/).every((id) => document.getElementById(id)) && by.split(/\s+/).map((id) => document.getElementById(id).textContent).join('').trim()) return true;
  return false;
};
if (!document.documentElement.lang) say('no lang on <html>');
if (!document.title.trim()) say('no document title');
const main = document.getElementById('main');
const h1s = Array.from(main.querySelectorAll('h1')).filter(visible);
if (h1s.length !== 1) say(`${h1s.length} visible h1 in main`);
let level = 0;
for (const hd of Array.from(main.querySelectorAll('h1, h2, h3, h4, h5, h6')).filter(visible)) {
  const l = Number(hd.tagName[1]);
  if (l > level + 1) say(`heading level skipped (h${level} then h${l})`, hd);
  level = l;
}
for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
  if (!(el.labels && el.labels.length && Array.from(el.labels).some((l) => l.textContent.trim())) && !named(el)) say('form control without a label', el);
}
for (const el of document.querySelectorAll('button, [role=button]')) {
  if (!el.textContent.trim() && !named(el)) say('button without a name', el);
}
for (const el of document.querySelectorAll('a[href]')) {
  if (!el.textContent.trim() && !named(el) && !el.querySelector('img[alt]:not([alt=""])')) say('link without a name', el);
}
for (const el of document.querySelectorAll('img')) {
  if (!el.hasAttribute('alt')) say('img without alt', el);
}
for (const el of document.querySelectorAll('svg[role=img]')) {
  if (!named(el)) say('svg image without a name', el);
}
for (const t of document.querySelectorAll('table')) {
  const caption = t.querySelector('caption');
  if (!(caption && caption.textContent.trim()) && !named(t)) say('table without a caption or name', t);
  const heads = t.querySelectorAll('thead th');
  if (!heads.length) say('table without column headers', t);
  for (const th of heads) if (th.getAttribute('scope') !== 'col') say('column header without scope=col', th);
}
const ids = new Map();
for (const el of document.querySelectorAll('[id]')) ids.set(el.id, (ids.get(el.id) || 0) + 1);
for (const [id, n] of ids) if (n > 1) say(`id "${id}" used ${n} times`);
const live = document.getElementById('announce');
if (!live || live.getAttribute('aria-live') !== 'polite') say('no polite live region #announce');
// Contrast.
const rgba = (c) => {
  const m = /rgba?\(([^)]+)\)/.exec(c);
  if (!m) return [0, 0, 0, 0];
  const p = m[1].split(/[,\s/]+/).filter(Boolean).map(Number);
  return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
};
const over = (top, under) => {
  const a = top[3];
  return [0, 1, 2].map((i) => top[i] * a + under[i] * (1 - a)).concat([1]);
};
const background = (el) => {
  const layers = [];
  for (let e = el; e; e = e.parentElement) {
    const c = rgba(getComputedStyle(e).backgroundColor);
    if (c[3] > 0) layers.push(c);
    if (c[3] >= 1) break;
  }
  let bg = [255, 255, 255, 1];
  for (const c of layers.reverse()) bg = over(c, bg);
  return bg;
};
const lum = (c) => {
  const [r, g, b] = c.slice(0, 3).map((v) => {
    const s = v / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const ratio = (a, b) => {
  const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
  return (x + 0.05) / (y + 0.05);
};
for (const el of document.body.querySelectorAll('*')) {
  if (el.closest('svg, .visually-hidden, [hidden], button:disabled, input:disabled')) continue;
  if (!visible(el)) continue;
  const text = Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
  const before = getComputedStyle(el, '::before');
  const pseudo = before.content && !['none', 'normal', '""'].includes(before.content);
  const bg = background(el);
  for (const st of [text ? getComputedStyle(el) : null, pseudo ? before : null]) {
    if (!st) continue;
    const fg = over(rgba(st.color), bg);
    const size = parseFloat(st.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(st.fontWeight) >= 700);
    const r = ratio(fg, bg);
    if (r < (large ? 3 : 4.5)) say(`contrast ${r.toFixed(2)}:1 (${st.color} on rgb(${bg.slice(0, 3).map(Math.round).join(',')}))`, el);
  }
}
return problems;
