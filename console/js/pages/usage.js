// Usage: credits by day, by asset and by a dimension (e.g. project or team), by component
// (models, tools), the markup as its own figure, and the most expensive executions.
// Data: GET /v1/accounts/{id}/usage?from=&to=&group_by=day|asset|component|dimension:KEY (and
// group_by=asset for each day with usage: the stacked chart by day and asset) and
// /v1/accounts/{id}/executions?from=&to=&limit= (the executions of the range, ranked here by
// exact decimal comparison).

import { h, fill, field, announce } from '../dom.js';
import * as api from '../api.js';
import * as dec from '../decimal.js';
import * as fmt from '../format.js';
import { stackedBars, hbars, legend, mount } from '../chart.js';
import { go, href } from '../router.js';

const RANGES = { 7: 'Last 7 days', 30: 'Last 30 days', 90: 'Last 90 days' };
/** Executions read to rank the most expensive (pages of 500, newest first). */
const RANK_LIMIT = 2000;
/** Assets with their own colour in the by-day chart (the largest); the rest stack as one. */
const STACKED_ASSETS = 7;
/** Requests in flight at once for the by-day-by-asset figures. */
const PARALLEL = 6;

/** Each day's credits by asset: one /usage?group_by=asset per day with usage (from, to:
 * that UTC day), at most PARALLEL at a time. -> {day: usage answer}. */
async function assetsByDay(get, days, signal) {
  const out = {};
  const queue = days.slice();
  const worker = async () => {
    while (queue.length && !signal.aborted) {
      const day = queue.shift();
      const next = new Date(Date.parse(`${day}T00:00:00Z`) + 86400000).toISOString().replace('.000Z', 'Z');
      out[day] = await get({ from: `${day}T00:00:00Z`, to: next, group_by: 'asset' });
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, days.length) }, worker));
  return out;
}

function dayStart(daysAgo) {
  const d = new Date();
  d.setUTCHours(0, 0, 0, 0);
  d.setUTCDate(d.getUTCDate() - daysAgo);
  return d;
}

/** Every UTC day from `from` (a Date) to today, as YYYY-MM-DD. */
function daysFrom(from) {
  const out = [];
  const end = dayStart(0).getTime();
  for (let t = from.getTime(); t <= end; t += 86400000) out.push(fmt.day(new Date(t)));
  return out;
}

function quantitiesOf(g) {
  return fmt.quantities(g.quantities);
}

/** A table of usage groups: key, calls, data volume, credits (vendor price). */
function groupsTable(id, caption, keyLabel, u) {
  return h('table', { class: 'cards', id },
    h('caption', { class: 'visually-hidden' }, caption),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, keyLabel), h('th', { scope: 'col', class: 'num' }, 'Calls'),
      h('th', { scope: 'col' }, 'Data volume'), h('th', { scope: 'col', class: 'num' }, 'Credits'))),
    h('tbody', {}, u.groups.map((g) => h('tr', { dataset: { key: g.key } },
      h('th', { scope: 'row', dataset: { label: keyLabel, col: 'key' } }, g.key === '' ? '(none)' : g.key),
      h('td', { class: 'num', dataset: { label: 'Calls', col: 'calls' } }, String(g.calls)),
      h('td', { dataset: { label: 'Data volume', col: 'volume' } }, quantitiesOf(g)),
      h('td', { class: 'num', dataset: { label: 'Credits', col: 'amount' } }, g.amount)))),
    h('tfoot', {},
      h('tr', {}, h('th', { scope: 'row' }, 'Markup'), h('td', { colspan: '2', class: 'hint' }, `rate ${u.markup_rate}`), h('td', { class: 'num', dataset: { col: 'markup' } }, u.markup)),
      h('tr', {}, h('th', { scope: 'row' }, 'Total'), h('td', { class: 'num' }, String(u.calls)), h('td', {}), h('td', { class: 'num', dataset: { col: 'total' } }, u.total))));
}

export async function render(page, { account, params, signal }) {
  const range = RANGES[params.get('days')] ? params.get('days') : '30';
  const dim = /^[a-z][a-z0-9_]{0,63}$/.test(params.get('dimension') || '') ? params.get('dimension') : 'project';
  const from = dayStart(Number(range) - 1);
  const window = { from: from.toISOString().replace('.000Z', 'Z') };
  const base = `/v1/accounts/${api.seg(account)}`;
  const heading = h('h1', {}, 'Usage');
  fill(page, heading, h('p', { class: 'lead' }, `Account ${account}`), h('p', { class: 'loading' }, 'Loading…'));

  const query = (q) => api.get(`${base}/usage`, q, { signal });
  const get = (group) => query({ ...window, group_by: group });
  const [byDay, byAsset, byComp, byDim] = await Promise.all([get('day'), get('asset'), get('component'), get(`dimension:${dim}`).catch((e) => e)]);
  if (signal.aborted) return null;
  const perDayAsset = await assetsByDay(query, byDay.groups.map((g) => g.key), signal);
  if (signal.aborted) return null;

  // Most expensive executions of the range: every execution read (up to RANK_LIMIT), ranked
  // by exact comparison of their totals.
  const execs = [];
  let cursor;
  let capped = false;
  do {
    const p = await api.get(`${base}/executions`, { ...window, limit: 500, cursor }, { signal });
    execs.push(...p.executions);
    cursor = p.next_cursor;
    if (execs.length >= RANK_LIMIT && cursor) {
      capped = true;
      break;
    }
  } while (cursor);
  if (signal.aborted) return null;
  const top = execs.slice().sort((a, b) => dec.cmp(b.total, a.total) || a.execution_id.localeCompare(b.execution_id)).slice(0, 10);

  // Controls.
  const rangeIn = h('select', { name: 'days' }, Object.entries(RANGES).map(([v, t]) => h('option', { value: v, selected: v === range }, t)));
  const dimIn = h('input', { name: 'dimension', value: dim, autocomplete: 'off', spellcheck: 'false', pattern: '[a-z][a-z0-9_]*' });
  const controls = h('section', { class: 'card', 'aria-labelledby': 'uc-h' }, h('h2', { id: 'uc-h' }, 'Range and dimension'),
    h('form', { class: 'filters', on: { submit: (ev) => {
      ev.preventDefault();
      go('usage', { account, days: rangeIn.value, dimension: dimIn.value.trim() });
    } } }, field('Range (UTC days)', rangeIn), field('Dimension key', dimIn, 'e.g. project or team'),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Show'))));

  // Figures: vendor price, markup, total, calls.
  const figures = h('section', { class: 'card', 'aria-labelledby': 'uf-h' }, h('h2', { id: 'uf-h' }, `${RANGES[range]}`),
    h('dl', { class: 'figures' },
      h('div', {}, h('dt', {}, 'Vendor price'), h('dd', { id: 'usage-subtotal' }, byAsset.subtotal)),
      h('div', {}, h('dt', {}, `Markup (${byAsset.markup_rate})`), h('dd', { id: 'usage-markup' }, byAsset.markup)),
      h('div', {}, h('dt', {}, 'Total credits'), h('dd', { id: 'usage-total' }, byAsset.total)),
      h('div', {}, h('dt', {}, 'Calls'), h('dd', { id: 'usage-calls' }, String(byAsset.calls)))));

  // By day: a bar per day (vendor price), every day of the range shown.
  const days = daysFrom(from);
  // One series per large asset (largest first), the rest as "Other assets"; exact sums.
  const named = byAsset.groups.slice(0, byAsset.groups.length > STACKED_ASSETS ? STACKED_ASSETS - 1 : STACKED_ASSETS).map((g) => g.key);
  const series = named.map((a) => ({ name: a, values: {} }));
  const other = { name: 'Other assets', values: {} };
  for (const [day, u] of Object.entries(perDayAsset)) {
    for (const g of u.groups) {
      const i = named.indexOf(g.key);
      const se = i >= 0 ? series[i] : other;
      se.values[day] = dec.add(se.values[day] || '0', g.amount);
    }
  }
  if (Object.keys(other.values).length) series.push(other);
  const dayChart = h('div', { class: 'chart-box' });
  const daySection = h('section', { class: 'card', 'aria-labelledby': 'ud-h' }, h('h2', { id: 'ud-h' }, 'Credits by day and asset (vendor price)'),
    dayChart, legend(series.map((se) => se.name)),
    h('details', {}, h('summary', {}, 'Figures by day'), groupsTable('usage-by-day', 'Credits by day', 'Day (UTC)', byDay)));

  // By asset, component, dimension.
  const assetChart = h('div', { class: 'chart-box' });
  const assetSection = h('section', { class: 'card', 'aria-labelledby': 'ua-h' }, h('h2', { id: 'ua-h' }, 'By asset'),
    assetChart, groupsTable('usage-by-asset', 'Credits by asset', 'Asset', byAsset));
  const compSection = h('section', { class: 'card', 'aria-labelledby': 'uco-h' }, h('h2', { id: 'uco-h' }, 'By component'),
    groupsTable('usage-by-component', 'Credits by component', 'Component', byComp));
  const dimSection = h('section', { class: 'card', 'aria-labelledby': 'udi-h' }, h('h2', { id: 'udi-h' }, `By ${dim}`),
    byDim instanceof Error ? api.errorFor(byDim) : groupsTable('usage-by-dimension', `Credits by ${dim}`, dim, byDim));

  // Most expensive executions.
  const topSection = h('section', { class: 'card', 'aria-labelledby': 'ut-h' }, h('h2', { id: 'ut-h' }, 'Most expensive executions'),
    h('p', { class: 'hint' }, capped ? `Among the ${execs.length} newest executions of the range.` : `${execs.length} executions in the range.`),
    top.length ? h('table', { class: 'cards', id: 'usage-top' },
      h('caption', { class: 'visually-hidden' }, 'The ten most expensive executions of the range'),
      h('thead', {}, h('tr', {}, ['Execution', 'Started (UTC)', 'Calls', 'Vendor price', 'Markup', 'Total'].map((t, i) => h('th', { scope: 'col', class: i >= 2 ? 'num' : null }, t)))),
      h('tbody', {}, top.map((x) => h('tr', { dataset: { execution: x.execution_id } },
        h('td', { dataset: { label: 'Execution', col: 'execution' } }, h('a', { href: href('live', { account, execution: x.execution_id }) }, x.execution_id)),
        h('td', { dataset: { label: 'Started (UTC)' } }, fmt.dateTime(x.first_event_at)),
        h('td', { class: 'num', dataset: { label: 'Calls' } }, String(x.calls)),
        h('td', { class: 'num', dataset: { label: 'Vendor price', col: 'subtotal' } }, x.subtotal),
        h('td', { class: 'num', dataset: { label: 'Markup', col: 'markup' } }, x.markup),
        h('td', { class: 'num', dataset: { label: 'Total', col: 'total' } }, x.total))))) : h('p', {}, 'No executions in this range.'));

  fill(page, heading, h('p', { class: 'lead' }, `Account ${account}`), h('div', { class: 'grid-2' }, figures, controls),
    daySection, h('div', { class: 'grid-2 even' }, assetSection, h('div', {}, compSection, dimSection)), topSection);
  const stops = [
    mount(dayChart, (w) => stackedBars({
      categories: days, series, width: w,
      title: `Credits by day, ${RANGES[range].toLowerCase()}`,
      desc: `${byDay.groups.length} days with usage; vendor price ${byDay.subtotal} credits in all, markup ${byDay.markup} on top.`,
    })),
    mount(assetChart, (w) => hbars({
      items: byAsset.groups.map((g) => ({ label: g.key, value: g.amount })), width: w,
      title: 'Credits by asset', desc: `${byAsset.groups.length} assets; the largest is ${byAsset.groups[0] ? byAsset.groups[0].key : 'none'}.`,
    })),
  ];
  announce('Usage loaded');
  return () => stops.forEach((f) => f());
}

