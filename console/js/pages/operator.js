// Operator (operator token only): pipeline health (/readyz per stage, lag and last progress
// from /metrics), accounts with the lowest balances and those below a threshold, dead letters
// by reason with a sample, vouchers (create, list, revoke). Each section loads on its own and
// says plainly when the service cannot answer it.

import { h, fill, field, announce } from '../dom.js';
import * as api from '../api.js';
import * as fmt from '../format.js';
import { href } from '../router.js';

/** Prometheus text -> [{name, labels: {k: v}, value: string}] (counts and times only). */
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[3] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: m[4] });
  }
  return out;
}

function section(id, title, ...body) {
  return h('section', { class: 'card', id, 'aria-labelledby': `${id}-h` }, h('h2', { id: `${id}-h` }, title), ...body);
}

function ago(secondsText) {
  const t = Number(secondsText);
  if (!t) return 'never';
  const s = Math.max(0, Math.round(Date.now() / 1000 - t));
  const when = new Date(t * 1000).toISOString().slice(0, 19).replace('T', ' ');
  return `${when} UTC (${s < 120 ? `${s} s` : `${Math.round(s / 60)} min`} ago)`;
}

async function health(box, signal) {
  const [ready, metrics] = await Promise.all([api.getText('/readyz', { signal }), api.getText('/metrics', { signal })]);
  const ms = parseMetrics(metrics.text);
  const sum = (name) => ms.filter((m) => m.name === name).reduce((a, m) => a + Number(m.value), 0);
  const one = (name) => (ms.find((m) => m.name === name) || {}).value;
  let stages = null;
  let down = ready.text.trim();
  try {
    const j = JSON.parse(ready.text);
    stages = j.stages || null;
    down = (j.not_ready || []).join(', ') || down;
  } catch { /* plain text */ }
  const rows = [
    ['Ready', ready.status === 200 ? 'yes' : `no: ${down}`],
    ['Pipeline consumer lag (messages)', String(sum('usage_agg_pipeline_consumer_lag_messages'))],
    ['Sink lag (messages)', String(sum('usage_agg_sink_lag_messages'))],
    ['Ledger and other stages lag (messages)', String(sum('usage_agg_stage_consumer_lag_messages'))],
    ['Open executions', String(sum('usage_agg_rollup_open_executions'))],
    ['Debits emitted by this instance', String(sum('usage_agg_rating_debits_total'))],
    ['Last pipeline progress', ago(one('usage_agg_pipeline_last_progress_timestamp_seconds'))],
    ['Last ClickHouse insert', ago(one('usage_agg_sink_last_insert_timestamp_seconds'))],
  ];
  const rejected = ms.filter((m) => m.name === 'usage_agg_rating_events_rejected_total' && Number(m.value) > 0);
  fill(box,
    h('dl', { class: 'figures', id: 'health' }, rows.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v)))),
    stages ? h('table', { class: 'cards', id: 'stages' },
      h('caption', {}, '/readyz per stage'),
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Stage'), h('th', { scope: 'col' }, 'Ready'), h('th', { scope: 'col' }, 'Why'))),
      h('tbody', {}, Object.entries(stages).map(([name, st]) => h('tr', {},
        h('th', { scope: 'row', dataset: { label: 'Stage' } }, name),
        h('td', { dataset: { label: 'Ready' } }, st.ready === false ? 'no' : st.enabled === false ? 'not run here' : 'yes'),
        h('td', { dataset: { label: 'Why' } }, st.detail || st.reason || st.why || ''))))) : null,
    rejected.length ? h('p', { class: 'hint' }, `Events rejected by this instance since it started: ${rejected.map((m) => `${m.labels.reason} ${m.value}`).join(', ')}.`) : null);
}

async function accounts(box, signal) {
  const a = await api.get('/v1/accounts', { order: 'balance', limit: 20 }, { signal });
  const list = a.accounts || [];
  fill(box, list.length ? h('table', { class: 'cards', id: 'low-balances' },
    h('caption', { class: 'visually-hidden' }, 'Accounts with the lowest balances'),
    h('thead', {}, h('tr', {}, ['Account', 'Balance', 'Below threshold', 'Last entry (UTC)'].map((t, i) => h('th', { scope: 'col', class: i === 1 ? 'num' : null }, t)))),
    h('tbody', {}, list.map((x) => h('tr', {},
      h('td', { dataset: { label: 'Account' } }, h('a', { href: href('transactions', { account: x.account_id }) }, x.account_id)),
      h('td', { class: 'num', dataset: { label: 'Balance' } }, x.balance),
      h('td', { dataset: { label: 'Below threshold' } }, (x.below || x.below_thresholds || []).join(', ') || '—'),
      h('td', { dataset: { label: 'Last entry (UTC)' } }, fmt.dateTime(x.last_entry_at)))))) : h('p', {}, 'No accounts yet.'));
}

async function deadLetters(box, signal) {
  const d = await api.get('/v1/dead-letters', { group_by: 'reason' }, { signal });
  const groups = d.reasons || d.groups || [];
  fill(box, groups.length ? h('table', { class: 'cards', id: 'dead-letters' },
    h('caption', { class: 'visually-hidden' }, 'Dead letters by reason'),
    h('thead', {}, h('tr', {}, ['Reason', 'Count', 'Last (UTC)', 'Sample'].map((t, i) => h('th', { scope: 'col', class: i === 1 ? 'num' : null }, t)))),
    h('tbody', {}, groups.map((g) => h('tr', {},
      h('td', { dataset: { label: 'Reason' } }, h('code', {}, g.reason)),
      h('td', { class: 'num', dataset: { label: 'Count' } }, String(g.count)),
      h('td', { dataset: { label: 'Last (UTC)' } }, fmt.dateTime(g.last_at || g.last_rejected_at)),
      h('td', { dataset: { label: 'Sample' } }, h('code', {}, (g.sample && (g.sample.message || g.sample.payload)) || g.message || '')))))) : h('p', {}, 'No dead letters.'));
}

async function vouchers(box, signal) {
  const listBox = h('div', {});
  const out = h('div', { 'aria-live': 'polite', id: 'voucher-result' });
  const load = async () => {
    const v = await api.get('/v1/vouchers', {}, { signal });
    const list = v.vouchers || [];
    fill(listBox, list.length ? h('table', { class: 'cards', id: 'vouchers' },
      h('caption', { class: 'visually-hidden' }, 'Vouchers'),
      h('thead', {}, h('tr', {}, ['Voucher', 'Credits', 'Used', 'Valid (UTC)', 'State', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, list.map((x) => {
        const d = x.def || x;
        const revoke = h('button', { type: 'button', class: 'secondary', 'aria-label': `Revoke ${d.masked}` }, 'Revoke');
        revoke.addEventListener('click', async () => {
          revoke.disabled = true;
          try {
            await api.post(`/v1/vouchers/${api.seg(d.code_hash || x.code_hash)}/revoke`, {});
            fill(out, h('p', { class: 'ok', role: 'status' }, `Revoked ${d.masked}.`));
            await load();
          } catch (e) {
            fill(out, api.errorFor(e));
            revoke.disabled = false;
          }
        });
        return h('tr', {},
          h('td', { dataset: { label: 'Voucher' } }, h('code', {}, d.masked), d.description ? ` ${d.description}` : ''),
          h('td', { dataset: { label: 'Credits' } }, d.credits),
          h('td', { dataset: { label: 'Used' } }, `${x.redemptions ?? x.used ?? 0} / ${d.max_redemptions}`),
          h('td', { dataset: { label: 'Valid (UTC)' } }, `${fmt.dateTime(d.valid_from)} – ${d.valid_until ? fmt.dateTime(d.valid_until) : 'no end'}`),
          h('td', { dataset: { label: 'State' } }, x.revoked_at ? `revoked ${fmt.dateTime(x.revoked_at)}` : 'active'),
          h('td', {}, x.revoked_at ? '' : revoke));
      }))) : h('p', {}, 'No vouchers yet.'));
  };
  const credits = h('input', { name: 'credits', inputmode: 'decimal', required: true, autocomplete: 'off' });
  const maxR = h('input', { name: 'max_redemptions', inputmode: 'numeric', required: true, value: '1', autocomplete: 'off' });
  const validFor = h('input', { name: 'valid_for', value: '30days', autocomplete: 'off' });
  const desc = h('input', { name: 'description', autocomplete: 'off' });
  const form = h('form', { class: 'filters', id: 'voucher-form', novalidate: true },
    field('Credits', credits), field('Redemptions', maxR), field('Valid for', validFor, 'e.g. 30days, 12h'), field('Description', desc),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Create voucher')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const r = await api.post('/v1/vouchers', {
        credits: credits.value.trim(), max_redemptions: Number(maxR.value), valid_for: validFor.value.trim() || undefined,
        description: desc.value.trim() || undefined,
      });
      const b = r.body || {};
      fill(out, h('p', { class: 'ok', role: 'status' }, 'Created. Code (shown once): ', h('code', { id: 'new-voucher-code' }, b.code || '?')));
      await load();
    } catch (e) {
      fill(out, api.errorFor(e));
    }
  });
  await load();
  fill(box, form, out, listBox);
}

export async function render(page, { signal }) {
  const parts = [
    ['op-health', 'Pipeline health', health],
    ['op-accounts', 'Lowest balances', accounts],
    ['op-dead', 'Dead letters by reason', deadLetters],
    ['op-vouchers', 'Vouchers', vouchers],
  ];
  const boxes = parts.map(([id]) => h('div', { id: `${id}-body` }, h('p', { class: 'loading' }, 'Loading…')));
  fill(page, h('h1', {}, 'Operator'), h('p', { class: 'lead' }, 'Every account; the operator token only.'),
    parts.map(([id, title], i) => section(id, title, boxes[i])));
  await Promise.all(parts.map(async ([, , load], i) => {
    try {
      await load(boxes[i], signal);
    } catch (e) {
      if (!signal.aborted) fill(boxes[i], api.errorFor(e));
    }
  }));
  announce('Operator page loaded');
  return null;
}
