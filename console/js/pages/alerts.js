// The Credits page's recent alerts: the account's newest alerts, newest first: low balance
// (a threshold crossed downwards, or back above it), a grant about to expire, and spend alerts
// (credits in a clock hour, or of one execution, over the configured limit). Data: GET
// /v1/accounts/{id}/alerts (the account's own key or the operator token; kept in the
// service's memory, so it answers with ClickHouse down). Amounts are the API's decimal strings.

import { h, fill, announce } from '../dom.js';
import * as api from '../api.js';
import * as fmt from '../format.js';

/** What an alert says, in words. */
export function kindText(a) {
  switch (a.kind) {
    case 'low_balance': return a.crossing === 'recovered' ? 'Back above a threshold' : 'Balance below a threshold';
    case 'grant_expiring': return 'Credits about to expire';
    case 'account_hourly_credits': return 'Spend in one hour over the limit';
    case 'execution_credits': return 'Spend of one execution over the limit';
    default: return a.kind;
  }
}

function detail(a) {
  if (a.kind === 'grant_expiring') return `Grant ${a.grant_id || '?'}${a.expires_at ? ` expires ${fmt.dateTime(a.expires_at)} UTC` : ''}`;
  if (a.amount != null) return `${a.amount} credits spent${a.execution_id ? ` by execution ${a.execution_id}` : ''}`;
  return '';
}

export function alerts(account, signal) {
  const path = `/v1/accounts/${api.seg(account)}/alerts`;
  const box = h('div', { id: 'alerts-list' });
  const refresh = h('button', { type: 'button', class: 'secondary', id: 'alerts-refresh' }, 'Refresh alerts');
  const load = async () => {
    try {
      const r = await api.get(path, { limit: 20 }, { signal });
      const list = r.alerts || [];
      if (!list.length) {
        fill(box, h('p', { id: 'alerts-none' }, 'No recent alerts.'));
        return;
      }
      const heads = ['When (UTC)', 'Alert', 'Threshold (credits)', 'Balance (credits)', 'Detail'];
      fill(box, h('table', { class: 'cards', id: 'alerts' },
        h('caption', { class: 'visually-hidden' }, 'Recent alerts, newest first'),
        h('thead', {}, h('tr', {}, heads.map((t, i) => h('th', { scope: 'col', class: i === 2 || i === 3 ? 'num' : null }, t)))),
        h('tbody', {}, list.map((a) => h('tr', { dataset: { alertId: a.alert_id, kind: a.kind } },
          h('td', { class: 'at', dataset: { label: 'When (UTC)' } }, fmt.dateTime(a.at)),
          h('th', { scope: 'row', class: 'kind', dataset: { label: 'Alert' } }, kindText(a)),
          h('td', { class: 'num threshold', dataset: { label: 'Threshold (credits)' } },
            a.threshold == null ? '—' : `${a.threshold}${a.threshold_share ? ` (${a.threshold_share} of the last top-up)` : ''}`),
          h('td', { class: 'num balance', dataset: { label: 'Balance (credits)' } }, a.balance == null ? '—' : a.balance),
          h('td', { class: 'detail', dataset: { label: 'Detail' } }, detail(a)))))));
    } catch (e) {
      if (!signal.aborted) fill(box, api.errorFor(e));
    }
  };
  refresh.addEventListener('click', async () => {
    await load();
    announce('Alerts updated');
  });
  const section = h('section', { class: 'card', 'aria-labelledby': 'al-h' },
    h('h2', { id: 'al-h' }, 'Recent alerts'),
    h('p', { class: 'hint' }, 'The newest 20: low balance, credits about to expire, and spend over its limit.'),
    box, refresh);
  return { section, load };
}
