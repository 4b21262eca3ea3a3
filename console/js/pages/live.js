// Live: follow an execution (or a conversation) by id. Each call appears as it is priced and
// committed, with its cost and the running totals (vendor price, markup, total); the debit
// when the execution closes; a call's detail (quantities, unit prices, price version) on
// selection. Data: the server-sent events of GET /v1/executions/{id}/events?account_id=A or
// /v1/accounts/{id}/conversations/{cid}/events (history first, then live; resumed with
// Last-Event-ID after a dropped connection).

import { h, fill, field, announce } from '../dom.js';
import * as api from '../api.js';
import * as dec from '../decimal.js';
import * as fmt from '../format.js';
import { go } from '../router.js';

/** "1200 input tokens × 0.15 per 1000000" lines of a call's units. */
function unitsText(units) {
  return (units || []).map((u) => `${u.quantity} ${u.unit.replace(/_/g, ' ')}`).join(', ');
}

export async function render(page, { account, params, signal }) {
  const mode = params.get('conversation') ? 'conversation' : 'execution';
  const target = params.get(mode) || '';
  const heading = h('h1', {}, 'Live');

  const kindIn = h('select', { name: 'mode' },
    h('option', { value: 'execution', selected: mode === 'execution' }, 'Execution'),
    h('option', { value: 'conversation', selected: mode === 'conversation' }, 'Conversation'));
  const idIn = h('input', { name: 'id', value: target, autocomplete: 'off', spellcheck: 'false', required: true });
  const form = h('form', { class: 'filters', id: 'live-form', 'aria-labelledby': 'follow-h', on: {
    submit: (ev) => {
      ev.preventDefault();
      const v = idIn.value.trim();
      if (!v) {
        idIn.focus();
        return;
      }
      go('live', { account, [kindIn.value]: v });
    },
  } }, field('Follow', kindIn), field('Id', idIn), h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Follow')));

  const top = [heading, h('p', { class: 'lead' }, `Account ${account}`),
    h('section', { class: 'card', 'aria-labelledby': 'follow-h' }, h('h2', { id: 'follow-h' }, 'What to follow'), form)];
  if (!target) {
    fill(page, top, h('p', {}, 'Enter an execution id (or a conversation id) to see its calls as they are priced.'));
    return null;
  }

  const state = { calls: 0, ended: false, selected: null, rows: new Map() };
  const pill = h('span', { class: 'status-pill', id: 'live-status' }, 'connecting');
  const figs = {
    calls: h('dd', { id: 'live-calls' }, '0'),
    subtotal: h('dd', { id: 'live-subtotal' }, '0'),
    markup: h('dd', { id: 'live-markup' }, '0'),
    total: h('dd', { id: 'live-total' }, '0'),
    billed: h('dd', { id: 'live-billed' }, '0'),
  };
  const summary = h('section', { class: 'card', 'aria-labelledby': 'sum-h' },
    h('div', { class: 'section-head' }, h('h2', { id: 'sum-h' }, `${mode === 'execution' ? 'Execution' : 'Conversation'} ${target}`), pill),
    h('dl', { class: 'figures' },
      h('div', {}, h('dt', {}, 'Calls'), figs.calls),
      h('div', {}, h('dt', {}, 'Vendor price so far'), figs.subtotal),
      h('div', {}, h('dt', {}, 'Markup'), figs.markup),
      h('div', {}, h('dt', {}, 'Running total'), figs.total),
      h('div', {}, h('dt', {}, 'Billed'), figs.billed)));
  const tbody = h('tbody', {});
  const table = h('table', { class: 'entries cards', id: 'live-calls-table' },
    h('caption', { class: 'visually-hidden' }, 'Calls as they are priced, oldest first'),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, '#'),
      h('th', { scope: 'col' }, 'Time (UTC)'),
      mode === 'conversation' ? h('th', { scope: 'col' }, 'Execution') : null,
      h('th', { scope: 'col' }, 'Asset'),
      h('th', { scope: 'col' }, 'Data volume'),
      h('th', { scope: 'col', class: 'num' }, 'Cost'),
      h('th', { scope: 'col', class: 'num' }, 'Running total'))),
    tbody);
  const debits = h('div', { id: 'live-debits' });
  const detail = h('section', { class: 'card call-detail', id: 'call-detail', 'aria-labelledby': 'cd-h', hidden: true });
  const problem = h('div', { id: 'live-problem' });
  fill(page, top, summary, problem,
    h('div', { class: 'grid-2 live-grid' },
      h('section', { class: 'card', 'aria-labelledby': 'calls-h' }, h('h2', { id: 'calls-h' }, 'Calls'), table, debits),
      detail));

  const setRunning = (r) => {
    if (!r) return;
    figs.calls.textContent = String(r.calls);
    figs.subtotal.textContent = r.subtotal;
    figs.markup.textContent = r.markup;
    figs.total.textContent = r.total;
    figs.billed.textContent = r.billed;
  };

  const showDetail = (c, execId) => {
    detail.hidden = false;
    const rows = [
      ['Event', c.event_id], ['Execution', execId || '—'], ['Kind', c.kind ? fmt.kind(c.kind) : 'not committed yet'],
      ['Time (UTC)', fmt.dateTime(c.occurred_at)], ['Asset', c.asset_id + (c.asset_name_sent ? ` (sent as ${c.asset_name_sent})` : '')],
      ['Asset type', c.asset_type], ['Vendor', c.vendor || '—'], ['Agent', c.agent_id || '—'], ['Component', c.component || '—'],
      ['Dimensions', c.dimensions ? Object.entries(c.dimensions).map(([k, v]) => `${k}=${v}`).join(', ') || '—' : '—'],
      ['Price version', c.price_version], ['Cost', `${c.cost} credits`], ['Running subtotal', c.running_subtotal],
    ];
    fill(detail, h('h2', { id: 'cd-h', tabindex: '-1' }, `Call ${c.seq}`),
      h('dl', {}, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
      h('table', { class: 'sub', id: 'call-units' },
        h('caption', {}, 'Quantities and unit prices'),
        h('thead', {}, h('tr', {}, ['Unit', 'Quantity', 'Unit price', 'Per'].map((t, i) => h('th', { scope: 'col', class: i ? 'num' : null }, t)))),
        h('tbody', {}, (c.units || []).map((u) => h('tr', {},
          h('td', { dataset: { label: 'Unit' } }, u.unit),
          h('td', { class: 'num', dataset: { label: 'Quantity' } }, u.quantity),
          h('td', { class: 'num', dataset: { label: 'Unit price' } }, u.unit_price),
          h('td', { class: 'num', dataset: { label: 'Per' } }, String(u.per)))))));
    detail.querySelector('h2').focus();
  };

  const addCall = (data, id) => {
    const c = data.call;
    const key = id || `${data.execution_id}:${c.seq}:${c.event_id}`;
    if (state.rows.has(key)) return;
    const btn = h('button', { type: 'button', class: 'expand', 'aria-label': `Details of call ${c.seq} (${c.asset_id})` }, String(c.seq));
    const tr = h('tr', { class: 'new', dataset: { event: c.event_id, shownAt: String(Date.now()) } },
      h('td', { class: 'ctl', dataset: { label: '#' } }, btn),
      h('td', { dataset: { label: 'Time (UTC)', col: 'time' } }, fmt.dateTime(c.occurred_at)),
      mode === 'conversation' ? h('td', { dataset: { label: 'Execution', col: 'execution' } }, data.execution_id || 'direct') : null,
      h('td', { dataset: { label: 'Asset', col: 'asset' } }, c.asset_id),
      h('td', { dataset: { label: 'Data volume', col: 'volume' } }, unitsText(c.units)),
      h('td', { class: 'num', dataset: { label: 'Cost', col: 'cost' } }, c.cost),
      h('td', { class: 'num', dataset: { label: 'Running total', col: 'running' } }, data.running ? data.running.total : ''));
    btn.addEventListener('click', () => {
      if (state.selected) state.selected.classList.remove('selected');
      tr.classList.add('selected');
      state.selected = tr;
      showDetail(c, data.execution_id);
    });
    state.rows.set(key, tr);
    tbody.append(tr);
    state.calls += 1;
  };

  const addDebit = (data) => {
    const d = data.debit;
    const comp = data.components || {};
    debits.append(h('div', { class: 'ok debit', role: 'status', dataset: { debit: d.debit_id, shownAt: String(Date.now()) } },
      h('strong', {}, `${fmt.kind(d.kind)} debit ${d.total} credits`),
      ` (${d.calls} calls: models ${comp.models ?? '?'} + tools ${comp.tools ?? '?'} + markup ${comp.markup ?? d.markup}, subtotal ${d.subtotal}, markup rate ${d.markup_rate}) · ${d.debit_id}`));
    announce(`Debit of ${d.total} credits`);
  };

  // Screen readers hear the first call at once, then the latest count at most every 5 s (a
  // busy run must not flood them), and every debit.
  let announced = 0;
  let lastSaid = 0;
  let pending = null;
  const sayCalls = () => {
    pending = null;
    if (signal.aborted || state.calls === announced) return;
    announced = state.calls;
    lastSaid = Date.now();
    announce(`${state.calls} call${state.calls === 1 ? '' : 's'}, running total ${figs.total.textContent} credits`);
  };
  const onEvent = (ev) => {
    let data = {};
    try {
      data = ev.data ? JSON.parse(ev.data) : {};
    } catch {
      return;
    }
    if (ev.event === 'call') {
      addCall(data, ev.id);
      setRunning(data.running);
      pill.textContent = state.ended ? 'closed' : 'live';
    } else if (ev.event === 'debit') {
      addDebit(data);
      setRunning(data.running);
    } else if (ev.event === 'open') {
      pill.textContent = 'live';
      pill.className = 'status-pill open';
      setRunning(data.running);
    } else if (ev.event === 'end') {
      state.ended = true;
      pill.textContent = 'closed';
      pill.className = 'status-pill closed';
      setRunning(data.running);
    } else if (ev.event === 'error' || ev.event === 'dropped') {
      fill(problem, h('p', { class: 'hint' }, `${data.error || ev.event}; resuming…`));
    }
    if (state.calls !== announced && !pending) {
      pending = setTimeout(sayCalls, Math.max(0, lastSaid + 5000 - Date.now()));
    }
  };

  const path = mode === 'execution'
    ? `/v1/executions/${api.seg(target)}/events`
    : `/v1/accounts/${api.seg(account)}/conversations/${api.seg(target)}/events`;
  const query = mode === 'execution' ? { account_id: account } : {};
  const ctl = new AbortController();
  signal.addEventListener('abort', () => ctl.abort());
  api.stream(path, query, {
    onEvent,
    onOpen: () => fill(problem),
    finished: () => state.ended,
    signal: ctl.signal,
  }).then(() => {
    if (!ctl.signal.aborted && !state.ended) pill.textContent = 'stream ended';
  }).catch((e) => {
    if (ctl.signal.aborted) return;
    pill.textContent = 'stopped';
    fill(problem, api.errorFor(e));
  });
  announce(`Following ${mode} ${target}`);
  return () => ctl.abort();
}

/** The exact sum of the costs shown (for checks): dec.sum over the Cost column. */
export function shownCost() {
  return dec.sum(Array.from(document.querySelectorAll('#live-calls-table td[data-col="cost"]'), (td) => td.textContent));
}
