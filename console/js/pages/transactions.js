// Transactions: the balance, a running-balance chart, the table of ledger entries (date and
// time, kind, assets, data volume per asset, credits, running balance), each expandable to its
// per-asset and per-call breakdown; a date range; CSV of exactly the rows shown; keyset paging.
// Data: GET /v1/accounts/{id}/balance, /transactions, /v1/executions/{id} (per-call detail).

import { h, fill, id, announce, field } from '../dom.js';
import * as api from '../api.js';
import * as dec from '../decimal.js';
import * as fmt from '../format.js';
import { balanceChart, legend, mount } from '../chart.js';
import { go } from '../router.js';

const KINDS = ['debit', 'topup', 'voucher', 'adjustment', 'expiry'];
const SIZES = ['50', '100', '200', '500', '1000'];

/** The execution a debit entry bills, when it bills one. */
export function executionOf(entry) {
  if (entry.execution_id) return entry.execution_id;
  const m = /^(?:agent_execution|adjustment) (.+)$/.exec(entry.description || '');
  return entry.kind === 'debit' && m ? m[1] : null;
}

/** The text of each cell of an entry's row, as shown (the CSV is made of these). */
export function rowCells(e) {
  const assets = (e.assets || []).map((a) => a.asset_id);
  const volume = (e.assets || []).map((a) => `${a.asset_id}: ${fmt.quantities(a.quantities)}`);
  return {
    seq: String(e.seq),
    date: fmt.dateTime(e.date),
    kind: fmt.kind(e.kind),
    description: e.description || e.reference || '',
    assets,
    volume,
    credits: fmt.signed(e.credit, e.debit),
    balance: e.balance,
  };
}

export const CSV_HEADER = ['seq', 'date_time_utc', 'kind', 'description', 'assets', 'data_volume', 'credits', 'balance'];

export function csvRows(entries) {
  return [CSV_HEADER].concat(entries.map((e) => {
    const c = rowCells(e);
    return [c.seq, c.date, c.kind, c.description, c.assets.join('; '), c.volume.join('; '), c.credits, c.balance];
  }));
}

function dateParam(d, end) {
  if (!d) return undefined;
  if (!end) return `${d}T00:00:00Z`;
  const next = new Date(`${d}T00:00:00Z`);
  next.setUTCDate(next.getUTCDate() + 1);
  return next.toISOString().replace('.000Z', 'Z');
}

export async function render(page, { account, params, signal, session }) {
  const limit = SIZES.includes(params.get('limit')) ? params.get('limit') : '50';
  const before = params.get('before') || '';
  const newer = (params.get('newer') || '').split(',').filter(Boolean);
  const from = params.get('from') || '';
  const to = params.get('to') || '';
  const base = `/v1/accounts/${api.seg(account)}`;

  const heading = h('h1', {}, 'Transactions');
  fill(page, heading, h('p', { class: 'lead' }, `Account ${account}`), h('p', { class: 'loading' }, 'Loading…'));

  const [balance, list] = await Promise.all([
    api.get(`${base}/balance`, {}, { signal }).catch((e) => e),
    api.get(`${base}/transactions`, {
      limit, before_seq: before || undefined, from: dateParam(from, false), to: dateParam(to, true),
    }, { signal }).catch((e) => e),
  ]);
  if (signal.aborted) return null;
  if (list instanceof Error) {
    fill(page, heading, h('p', { class: 'lead' }, `Account ${account}`), api.errorFor(list));
    return null;
  }
  const entries = list.transactions || [];

  // Balance.
  const balanceBox = h('section', { class: 'card balance', 'aria-labelledby': 'bal-h' },
    h('h2', { id: 'bal-h' }, 'Balance'));
  if (balance instanceof Error) {
    balanceBox.append(api.errorFor(balance));
  } else {
    balanceBox.append(
      h('p', { class: 'figure' }, h('span', { id: 'balance', dataset: { value: balance.balance } }, balance.balance), ' credits'),
      h('p', { class: 'hint' }, `${balance.entries} entries; the last at ${fmt.dateTime(balance.last_entry_at)} UTC.`),
    );
  }

  // Filter form.
  const fromIn = h('input', { type: 'date', name: 'from', value: from });
  const toIn = h('input', { type: 'date', name: 'to', value: to });
  const sizeIn = h('select', { name: 'limit' }, SIZES.map((n) => h('option', { value: n, selected: n === limit }, n)));
  const filter = h('form', { class: 'filters', 'aria-labelledby': 'range-h', on: {
    submit: (ev) => {
      ev.preventDefault();
      go('transactions', { account, from: fromIn.value, to: toIn.value, limit: sizeIn.value });
    },
  } },
  field('From (UTC date)', fromIn),
  field('To (UTC date, included)', toIn),
  field('Entries per page', sizeIn),
  h('div', { class: 'actions' },
    h('button', { type: 'submit' }, 'Apply'),
    h('button', { type: 'button', class: 'secondary', on: { click: () => go('transactions', { account }) } }, 'Clear')));
  const filterBox = h('section', { class: 'card', 'aria-labelledby': 'range-h' }, h('h2', { id: 'range-h' }, 'Date range and page size'), filter);

  // Chart: in time order (entries are in ledger order; a grant and a debit of an earlier
  // event time can be applied in either order), then by seq.
  const points = entries.map((e) => ({ t: fmt.millis(e.date), v: e.balance, kind: e.kind, seq: e.seq }))
    .sort((a, b) => a.t - b.t || a.seq - b.seq);
  const chartBox = h('div', { class: 'chart-box' });
  const chartSection = h('section', { class: 'card', 'aria-labelledby': 'chart-h' },
    h('h2', { id: 'chart-h' }, 'Running balance'),
    h('p', { class: 'hint' }, 'The balance after each entry on this page; a dot per entry, coloured by kind.'),
    chartBox,
    legend(KINDS.map(fmt.kind)));

  // Summary of what is shown (exact sums).
  const credits = dec.sum(entries.map((e) => e.credit || '0'));
  const debits = dec.sum(entries.map((e) => e.debit || '0'));
  const net = dec.sub(credits, debits);
  const first = entries[0];
  const last = entries[entries.length - 1];
  const total = balance instanceof Error ? null : balance.entries;
  const range = entries.length
    ? (from || to ? `Entries ${last.seq}–${first.seq}` : `Entries ${last.seq}–${first.seq} of ${total ?? '?'}`)
    : 'No entries';
  const summary = h('p', { class: 'summary', id: 'summary' },
    `${range} (${entries.length} shown). On this page: credits `,
    h('span', { id: 'sum-credits' }, fmt.plus(credits)), ', debits ',
    h('span', { id: 'sum-debits' }, dec.sign(debits) > 0 ? `-${debits}` : debits), ', net ',
    h('span', { id: 'sum-net' }, fmt.plus(net)), '.');

  // Table.
  const tbody = h('tbody', {});
  for (const e of entries) addRow(tbody, e, account);
  const table = h('table', { class: 'entries', id: 'entries' },
    h('caption', { class: 'visually-hidden' }, `Ledger entries of account ${account}, newest first`),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Details')),
      h('th', { scope: 'col' }, 'Date and time (UTC)'),
      h('th', { scope: 'col' }, 'Kind'),
      h('th', { scope: 'col' }, 'Description'),
      h('th', { scope: 'col' }, 'Asset(s)'),
      h('th', { scope: 'col' }, 'Data volume'),
      h('th', { scope: 'col', class: 'num' }, 'Credits'),
      h('th', { scope: 'col', class: 'num' }, 'Balance'))),
    tbody);

  const csvButton = h('button', { type: 'button', id: 'export-csv', on: { click: () => {
    fmt.download(`transactions-${account}${from ? `-from-${from}` : ''}${to ? `-to-${to}` : ''}${before ? `-before-${before}` : ''}.csv`, fmt.csv(csvRows(entries)));
    announce(`Exported ${entries.length} entries as CSV`);
  } } }, 'Export CSV');

  // Pager: keyset cursors; `newer` keeps the cursors of the pages before this one.
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages of entries' });
  const common = { account, from, to, limit: limit === '50' ? undefined : limit };
  if (before) {
    pager.append(h('button', { type: 'button', class: 'secondary', on: { click: () => go('transactions', common) } }, 'Newest'));
    const prev = newer.slice(0, -1);
    const target = newer[newer.length - 1];
    pager.append(h('button', { type: 'button', class: 'secondary', id: 'newer', on: { click: () => go('transactions', {
      ...common, before: target && target !== 'top' ? target : undefined, newer: prev.join(','),
    }) } }, 'Newer'));
  }
  if (list.next_before_seq) {
    pager.append(h('button', { type: 'button', id: 'older', on: { click: () => go('transactions', {
      ...common, before: String(list.next_before_seq), newer: newer.concat([before || 'top']).slice(-50).join(','),
    }) } }, 'Older'));
  }

  const tableSection = h('section', { class: 'card', 'aria-labelledby': 'entries-h' },
    h('div', { class: 'section-head' }, h('h2', { id: 'entries-h' }, 'Entries'), csvButton),
    summary,
    entries.length ? table : h('p', {}, 'No entries in this range.'),
    pager);

  fill(page, heading, h('p', { class: 'lead' }, `Account ${account}${session.operator ? ' (operator view)' : ''}`),
    h('div', { class: 'grid-2' }, balanceBox, filterBox), chartSection, tableSection);
  const stop = mount(chartBox, (w) => balanceChart({
    points, width: w, title: `Running balance of account ${account}`, kinds: KINDS,
  }));
  announce(`${entries.length} entries loaded`);
  return stop;
}

function addRow(tbody, e, account) {
  const c = rowCells(e);
  const detailId = id('detail');
  const btn = h('button', {
    type: 'button', class: 'expand', 'aria-expanded': 'false', 'aria-controls': detailId,
    'aria-label': `Breakdown of entry ${e.seq}`,
  }, '▸');
  const kindClass = `kind-${e.kind}`;
  const tr = h('tr', { dataset: { seq: String(e.seq) }, class: kindClass },
    h('td', { class: 'ctl' }, btn),
    h('td', { dataset: { label: 'Date and time (UTC)', col: 'date' } }, c.date),
    h('td', { dataset: { label: 'Kind', col: 'kind' } }, c.kind),
    h('td', { dataset: { label: 'Description', col: 'description' }, class: 'desc' }, c.description),
    h('td', { dataset: { label: 'Asset(s)', col: 'assets' } }, list(c.assets)),
    h('td', { dataset: { label: 'Data volume', col: 'volume' } }, list((e.assets || []).map((a) => fmt.quantities(a.quantities)))),
    h('td', { class: 'num', dataset: { label: 'Credits', col: 'credits' } }, c.credits),
    h('td', { class: 'num', dataset: { label: 'Balance', col: 'balance' } }, c.balance));
  const detail = h('tr', { class: 'detail', id: detailId, hidden: true }, h('td', { colspan: '8' }));
  btn.addEventListener('click', () => {
    const open = btn.getAttribute('aria-expanded') !== 'true';
    btn.setAttribute('aria-expanded', String(open));
    btn.textContent = open ? '▾' : '▸';
    detail.hidden = !open;
    if (open && !detail.dataset.filled) {
      detail.dataset.filled = '1';
      fill(detail.firstChild, breakdown(e, account));
    }
  });
  tbody.append(tr, detail);
}

function list(items) {
  if (!items.length) return '';
  if (items.length === 1) return items[0];
  return h('ul', { class: 'plain' }, items.map((t) => h('li', {}, t)));
}

function breakdown(e, account) {
  const out = [];
  out.push(h('p', {}, `Entry ${e.seq} · reference `, h('code', {}, e.reference), ` · balance after ${e.balance}`));
  if ((e.assets || []).length) {
    out.push(h('table', { class: 'sub' },
      h('caption', {}, 'Per asset (before markup)'),
      h('thead', {}, h('tr', {}, ['Asset', 'Calls', 'Data volume', 'Cost'].map((t, i) => h('th', { scope: 'col', class: i === 3 || i === 1 ? 'num' : null }, t)))),
      h('tbody', {}, e.assets.map((a) => h('tr', {},
        h('td', { dataset: { label: 'Asset' } }, a.asset_id),
        h('td', { class: 'num', dataset: { label: 'Calls' } }, String(a.calls)),
        h('td', { dataset: { label: 'Data volume' } }, fmt.quantities(a.quantities)),
        h('td', { class: 'num', dataset: { label: 'Cost' } }, a.cost))))));
    const costs = dec.sum(e.assets.map((a) => a.cost));
    const markup = dec.sub(e.debit || '0', costs);
    out.push(h('p', { class: 'hint' }, `Assets ${costs} + markup ${markup} = ${e.debit} credits.`));
  }
  const exec = executionOf(e);
  if (exec) {
    const box = h('div', { class: 'calls' });
    const b = h('button', { type: 'button', class: 'secondary', on: { click: async () => {
      b.disabled = true;
      fill(box, h('p', { class: 'loading' }, 'Loading calls…'));
      try {
        const t = await api.get(`/v1/executions/${api.seg(exec)}`, { account_id: account });
        fill(box, callsTable(t));
      } catch (err) {
        fill(box, api.errorFor(err));
      }
      b.disabled = false;
    } } }, `Calls of execution ${exec}`);
    out.push(h('p', {}, b, ' ', h('a', { href: `#/live?account=${encodeURIComponent(account)}&execution=${encodeURIComponent(exec)}` }, 'Open in Live')), box);
  }
  return out;
}

/** The per-call table of an execution trace (GET /v1/executions/{id}). */
export function callsTable(t) {
  const calls = t.calls || [];
  if (!calls.length) {
    return h('p', { class: 'hint' }, `Execution ${t.execution_id}: ${t.calls_priced ?? 0} calls, subtotal ${t.subtotal}, markup ${t.markup}, total ${t.total} (this service gives no per-call list for it).`);
  }
  return h('table', { class: 'sub calls-table' },
    h('caption', {}, `Calls of execution ${t.execution_id} (${t.status})`),
    h('thead', {}, h('tr', {}, ['Time (UTC)', 'Asset', 'Data volume', 'Unit prices', 'Cost', 'Running subtotal'].map((x, i) => h('th', { scope: 'col', class: i >= 4 ? 'num' : null }, x)))),
    h('tbody', {}, calls.map((c) => h('tr', { dataset: { event: c.event_id } },
      h('td', { dataset: { label: 'Time (UTC)' } }, fmt.dateTime(c.occurred_at)),
      h('td', { dataset: { label: 'Asset' } }, c.asset_id),
      h('td', { dataset: { label: 'Data volume', col: 'volume' } }, (c.units || []).map((u) => `${u.quantity} ${u.unit.replace(/_/g, ' ')}`).join(', ')),
      h('td', { dataset: { label: 'Unit prices', col: 'prices' } }, (c.units || []).map((u) => `${u.unit_price} per ${u.per} ${u.unit.replace(/_/g, ' ')}`).join(', ')),
      h('td', { class: 'num', dataset: { label: 'Cost', col: 'cost' } }, c.cost),
      h('td', { class: 'num', dataset: { label: 'Running subtotal' } }, c.running_subtotal || '')))),
    h('tfoot', {}, h('tr', {}, h('td', { colspan: '4' }, `Subtotal ${t.subtotal} + markup ${t.markup}`), h('td', { class: 'num', colspan: '2' }, `Total ${t.total}`))));
}
