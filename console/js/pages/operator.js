// Operator (operator token only): pipeline health (/readyz per stage, lag and last progress
// from /metrics), accounts below one of their low-balance thresholds (the ledger's own state),
// accounts by balance (lowest first; a balance filter), dead letters by reason with a sample,
// vouchers (create, list, revoke). Each section loads on its own and says plainly when the
// service cannot answer it (dead letters come from ClickHouse: without it, that section says
// so and the others still work).

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
  const sum = (name, stage) => ms.filter((m) => m.name === name && (!stage || m.labels.stage === stage)).reduce((a, m) => a + Number(m.value), 0);
  // The stages' lag beside the two shown on their own lines (the pipeline's, the sink's).
  const otherStages = (name) => ms.filter((m) => m.name === name && m.labels.stage !== 'pipeline' && m.labels.stage !== 'sink').reduce((a, m) => a + Number(m.value), 0);
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
    ['Pipeline consumer lag (messages)', String(sum('usage_agg_stage_consumer_lag_messages', 'pipeline'))],
    ['Sink lag (messages)', String(sum('usage_agg_sink_lag_messages'))],
    ['Ledger and other stages lag (messages)', String(otherStages('usage_agg_stage_consumer_lag_messages'))],
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

/** A "More" button that appends the next page: `next()` loads it and returns whether more remain. */
function more(label, next) {
  const b = h('button', { type: 'button', class: 'secondary' }, label);
  b.addEventListener('click', async () => {
    b.disabled = true;
    try {
      if (await next()) b.disabled = false;
      else b.remove();
    } catch (e) {
      b.replaceWith(api.errorFor(e));
    }
  });
  return b;
}

function table(id, caption, heads, numeric) {
  const body = h('tbody', {});
  const t = h('table', { class: 'cards', id },
    h('caption', { class: 'visually-hidden' }, caption),
    h('thead', {}, h('tr', {}, heads.map((t, i) => h('th', { scope: 'col', class: numeric.includes(i) ? 'num' : null }, t)))),
    body);
  return { t, body };
}

const PAGE = 20;

async function accounts(box, signal) {
  const below = h('input', { name: 'below', inputmode: 'decimal', autocomplete: 'off', placeholder: 'e.g. 10' });
  const order = h('select', { name: 'order' },
    h('option', { value: 'balance' }, 'Lowest balance first'),
    h('option', { value: 'last_activity' }, 'Most recent activity first'),
    h('option', { value: 'account_id' }, 'Account id'));
  const out = h('div', { id: 'accounts-out' });
  const form = h('form', { class: 'filters', id: 'accounts-form', novalidate: true },
    field('Order', order), field('Balance below (credits)', below, 'Optional; an exact decimal such as 10 or 2.50.'),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Show')));
  const load = async () => {
    const heads = ['Account', 'Balance', 'Overdraft', 'Entries', 'Last activity (UTC)'];
    const { t, body } = table('low-balances', 'Accounts', heads, [1, 2, 3]);
    const q = { order: order.value, below: below.value.trim(), limit: PAGE };
    const page = async (offset) => {
      const a = await api.get('/v1/accounts', { ...q, offset }, { signal });
      for (const x of a.accounts || []) {
        body.append(h('tr', {},
          h('th', { scope: 'row', dataset: { label: 'Account' } }, h('a', { href: href('transactions', { account: x.account_id }) }, x.account_id)),
          h('td', { class: 'num', dataset: { label: 'Balance' } }, x.balance),
          h('td', { class: 'num', dataset: { label: 'Overdraft' } }, x.overdraft),
          h('td', { class: 'num', dataset: { label: 'Entries' } }, String(x.entries)),
          h('td', { dataset: { label: 'Last activity (UTC)' } }, fmt.dateTime(x.last_activity_at) || '—')));
      }
      return a;
    };
    const first = await page(0);
    let next = first.next_offset;
    const count = h('p', { class: 'hint', id: 'accounts-total' }, `${first.total} account${first.total === 1 ? '' : 's'}${q.below ? ` below ${q.below}` : ''}.`);
    fill(out, first.total ? [count, t] : h('p', {}, q.below ? `No account below ${q.below}.` : 'No accounts yet.'),
      next != null ? more('More accounts', async () => { next = (await page(next)).next_offset; return next != null; }) : null);
  };
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await load();
      announce('Accounts updated');
    } catch (e) {
      fill(out, api.errorFor(e));
      if (e instanceof api.ApiError && e.body.parameter === 'below') below.focus();
    }
  });
  fill(box, form, out);
  await load();
}

async function belowThresholds(box, signal) {
  const heads = ['Account', 'Balance', 'Below', 'Entries', 'Last activity (UTC)'];
  const { t, body } = table('below-thresholds', 'Accounts below a threshold', heads, [1, 3]);
  const page = async (offset) => {
    const a = await api.get('/v1/accounts/below-thresholds', { limit: PAGE, offset }, { signal });
    for (const x of a.accounts || []) {
      const below = x.below.map((b) => (b.threshold === b.value ? b.value : `${b.threshold} (${b.value})`)).join(', ');
      body.append(h('tr', { dataset: { account: x.account_id } },
        h('th', { scope: 'row', dataset: { label: 'Account' } }, h('a', { href: href('credits', { account: x.account_id }) }, x.account_id)),
        h('td', { class: 'num balance', dataset: { label: 'Balance' } }, x.balance),
        h('td', { class: 'below', dataset: { label: 'Below' } }, below),
        h('td', { class: 'num', dataset: { label: 'Entries' } }, String(x.entries)),
        h('td', { dataset: { label: 'Last activity (UTC)' } }, fmt.dateTime(x.last_activity_at) || '—')));
    }
    return a;
  };
  const first = await page(0);
  let next = first.next_offset;
  const count = h('p', { class: 'hint', id: 'below-total' },
    `${first.total} account${first.total === 1 ? ' is' : 's are'} below one of their thresholds (the lowest balance first; “Below” lists each threshold with its value in credits).`);
  fill(box, first.total ? [count, t] : h('p', { id: 'below-none' }, 'No account is below its thresholds.'),
    next != null ? more('More accounts below a threshold', async () => { next = (await page(next)).next_offset; return next != null; }) : null);
}

function dlSource(d) {
  return `${d.source_topic} partition ${d.source_partition}, offset ${d.source_offset}`;
}

async function deadLetters(box, signal) {
  const [byReason, recent] = [h('div', {}), h('div', {})];
  fill(box, h('h3', {}, 'By reason'), byReason, h('h3', {}, 'Most recent'), recent);
  let r;
  try {
    r = await api.get('/v1/dead-letters/reasons', {}, { signal });
  } catch (e) {
    if (!(e instanceof api.ApiError) || e.status !== 503) throw e;
    fill(box, h('div', { class: 'error', role: 'alert', id: 'dead-letters-unavailable', dataset: { status: '503' } },
      h('p', {}, h('strong', {}, 'Dead letters cannot be listed right now.'),
        ' They are read from ClickHouse, which does not answer; the rest of this page does not need it.'),
      h('p', {}, `The service said: ${e.message}`)));
    return;
  }
  const groups = r.reasons || [];
  if (!groups.length) {
    fill(byReason, h('p', {}, 'No dead letters.'));
    fill(recent, null);
    return;
  }
  const g = table('dead-letters', 'Dead letters by reason', ['Reason', 'Count', 'Last (UTC)', 'Sample'], [1]);
  for (const x of groups) {
    g.body.append(h('tr', {},
      h('th', { scope: 'row', dataset: { label: 'Reason' } }, h('code', {}, x.reason)),
      h('td', { class: 'num', dataset: { label: 'Count' } }, String(x.count)),
      h('td', { dataset: { label: 'Last (UTC)' } }, fmt.dateTime(x.last_at)),
      h('td', { dataset: { label: 'Sample' } }, h('span', {}, x.sample.message, h('br', {}), h('span', { class: 'hint' }, dlSource(x.sample))))));
  }
  fill(byReason, g.t);
  const d = table('recent-dead-letters', 'Most recent dead letters', ['Dead-lettered (UTC)', 'Reason', 'Source', 'Message'], []);
  const page = async (cursor) => {
    const p = await api.get('/v1/dead-letters', { limit: PAGE, cursor }, { signal });
    for (const x of p.dead_letters || []) {
      d.body.append(h('tr', {},
        h('td', { dataset: { label: 'Dead-lettered (UTC)' } }, fmt.dateTime(x.dead_lettered_at)),
        h('td', { dataset: { label: 'Reason' } }, h('code', {}, x.reason)),
        h('td', { dataset: { label: 'Source' } }, dlSource(x)),
        h('td', { dataset: { label: 'Message' } }, x.message)));
    }
    return p.next_cursor;
  };
  let next = await page(undefined);
  fill(recent, d.t, next ? more('Older dead letters', async () => { next = await page(next); return Boolean(next); }) : null);
}

const STATES = { active: 'active', not_yet_valid: 'not yet valid', expired: 'expired', used_up: 'used up', revoked: 'revoked' };

async function vouchers(box, signal) {
  const listBox = h('div', {});
  const out = h('div', { 'aria-live': 'polite', id: 'voucher-result' });
  const load = async () => {
    const { t, body } = table('vouchers', 'Vouchers', ['Voucher', 'Credits', 'Redeemed', 'Valid (UTC)', 'State', 'Action'], [1]);
    const page = async (offset) => {
      const v = await api.get('/v1/vouchers', { limit: PAGE, offset }, { signal });
      for (const x of v.vouchers || []) {
        const revoke = h('button', { type: 'button', class: 'secondary', 'aria-label': `Revoke ${x.voucher}` }, 'Revoke');
        revoke.addEventListener('click', async () => {
          revoke.disabled = true;
          try {
            await api.post(`/v1/vouchers/${api.seg(x.id)}/revoke`, {});
            fill(out, h('p', { class: 'ok', role: 'status' }, `Revoked ${x.voucher}.`));
            await load();
          } catch (e) {
            fill(out, api.errorFor(e));
            revoke.disabled = false;
          }
        });
        body.append(h('tr', { dataset: { id: x.id } },
          h('th', { scope: 'row', dataset: { label: 'Voucher' } }, h('code', {}, x.voucher), x.description ? ` ${x.description}` : ''),
          h('td', { class: 'num', dataset: { label: 'Credits' } }, x.credits),
          h('td', { dataset: { label: 'Redeemed' } }, `${x.redeemed} of ${x.max_redemptions}`),
          h('td', { dataset: { label: 'Valid (UTC)' } }, `${fmt.dateTime(x.valid_from)} – ${fmt.dateTime(x.valid_until)}`),
          h('td', { class: 'state', dataset: { label: 'State', state: x.state } }, STATES[x.state] || x.state),
          h('td', { dataset: { label: 'Action' } }, x.state === 'revoked' ? '' : revoke)));
      }
      return v;
    };
    const first = await page(0);
    let next = first.next_offset;
    fill(listBox, first.total ? t : h('p', {}, 'No vouchers yet.'),
      next != null ? more('More vouchers', async () => { next = (await page(next)).next_offset; return next != null; }) : null);
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
  fill(box, form, out, listBox);
  await load();
}

export async function render(page, { signal }) {
  const parts = [
    ['op-health', 'Pipeline health', health],
    ['op-below', 'Accounts below a threshold', belowThresholds],
    ['op-accounts', 'Accounts by balance', accounts],
    ['op-dead', 'Dead letters', deadLetters],
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
