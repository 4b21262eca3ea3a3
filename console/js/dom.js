// Building DOM nodes without HTML strings: text always goes in as text (textContent), so
// nothing the API returns can become markup.

/**
 * h('td', {class: 'num', dataset: {label: 'Credits'}}, '0.96', child, ...): an element.
 * Attributes: `class`, `dataset` (object), `on` (object of event listeners), `hidden`
 * (boolean), others via setAttribute; null/undefined/false attributes are skipped. Children:
 * nodes, strings (as text), arrays (flattened), null/undefined/false (skipped).
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  set(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** The same for SVG elements. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  set(el, attrs);
  append(el, children);
  return el;
}

function set(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'on') for (const [ev, f] of Object.entries(v)) el.addEventListener(ev, f);
    else if (k === 'hidden') el.hidden = Boolean(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let uid = 0;
/** A unique id for label/aria wiring. */
export function id(prefix) {
  uid += 1;
  return `${prefix}-${uid}`;
}

/** Says `text` to screen readers (the page's polite live region). */
export function announce(text) {
  const r = document.getElementById('announce');
  if (!r) return;
  r.textContent = '';
  // A fresh node after a tick, so the same text twice is said twice.
  setTimeout(() => {
    r.textContent = text;
  }, 30);
}

/** A labelled form field: <div class=field><label for>…</label><input id>…</div>. */
export function field(label, input, hint) {
  const fid = input.id || id('f');
  input.id = fid;
  const hid = hint ? id('hint') : null;
  if (hid) input.setAttribute('aria-describedby', hid);
  return h('div', { class: 'field' },
    h('label', { for: fid }, label),
    input,
    hint ? h('span', { class: 'hint', id: hid }, hint) : null);
}

/** An error box (role=alert) with the message, or nothing when message is empty. */
export function errorBox(message) {
  return message ? h('p', { class: 'error', role: 'alert' }, message) : null;
}
