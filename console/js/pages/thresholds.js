// The Credits page's thresholds section: the low-balance thresholds in force for the account
// (the ledger's answer: rule, value in credits, whether the balance is below it), adding one,
// removing one, going back to the service's defaults. Data: GET/PUT
// /v1/accounts/{id}/thresholds (the account's own key or the operator token). A rule the
// ledger refuses is shown next to the field with the ledger's words; amounts stay the API's
// decimal strings.

import { h, fill, id, announce } from '../dom.js';
import * as api from '../api.js';
import * as dec from '../decimal.js';

/** A threshold as typed: credits ("10", "-5", "2.50") or a share of the last top-up ("20%"). */
export function looksLikeRule(text) {
  const t = text.trim();
  if (t.endsWith('%')) return dec.isDecimal(t.slice(0, -1).trim());
  return dec.isDecimal(t);
}

export function thresholds(account, signal) {
  const path = `/v1/accounts/${api.seg(account)}/thresholds`;
  const listBox = h('div', { id: 'thresholds-list' });
  const status = h('div', { id: 'thresholds-result', role: 'status', 'aria-live': 'polite' });
  const errId = id('rule-error');
  const rule = h('input', {
    name: 'threshold', autocomplete: 'off', spellcheck: 'false', placeholder: '10 or 20%',
    'aria-describedby': `${errId}-hint ${errId}`,
  });
  const ruleError = h('p', { class: 'error field-error', id: errId, role: 'alert' });
  let rules = [];

  const show = (a) => {
    rules = (a.thresholds || []).map((t) => t.rule);
    const rows = (a.thresholds || []).map((t) => {
      const remove = h('button', { type: 'button', class: 'secondary', 'aria-label': `Remove threshold ${t.rule}` }, 'Remove');
      remove.addEventListener('click', () => save(rules.filter((r) => r !== t.rule), `Threshold ${t.rule} removed.`));
      return h('tr', { dataset: { rule: t.rule } },
        h('th', { scope: 'row', dataset: { label: 'Threshold' } }, t.rule),
        h('td', { class: 'num', dataset: { label: 'Value (credits)' } }, t.value),
        h('td', { dataset: { label: 'Balance' } }, t.below ? 'below' : 'above'),
        h('td', { dataset: { label: 'Action' } }, remove));
    });
    fill(listBox,
      h('p', { class: 'hint', id: 'thresholds-source' }, a.custom_thresholds ? 'This account\'s own thresholds.' : 'The service\'s default thresholds (this account has none of its own).'),
      rows.length
        ? h('table', { class: 'cards', id: 'thresholds' },
          h('caption', { class: 'visually-hidden' }, 'Low-balance thresholds'),
          h('thead', {}, h('tr', {}, ['Threshold', 'Value (credits)', 'Balance', 'Action'].map((t, i) => h('th', { scope: 'col', class: i === 1 ? 'num' : null }, t)))),
          h('tbody', {}, rows))
        : h('p', { id: 'no-thresholds' }, 'No thresholds: no low-balance alerts are raised.'),
      a.custom_thresholds ? defaultsButton() : null);
  };

  const defaultsButton = () => {
    const b = h('button', { type: 'button', class: 'secondary', id: 'thresholds-defaults' }, 'Use the default thresholds');
    b.addEventListener('click', () => save(null, 'Default thresholds restored.'));
    return b;
  };

  const fieldError = (text) => {
    ruleError.textContent = text;
    if (text) rule.setAttribute('aria-invalid', 'true');
    else rule.removeAttribute('aria-invalid');
  };

  // PUT the whole list (null: the defaults); the ledger answers with the account as it holds it.
  const save = async (list, done, fromField = false) => {
    fill(status, h('p', { class: 'loading' }, 'Saving…'));
    try {
      const r = await api.put(path, { thresholds: list });
      show(r.body.account || {});
      fill(status, h('p', { class: 'ok' }, done));
      if (fromField) rule.value = '';
      announce(done);
      return true;
    } catch (e) {
      if (fromField && e instanceof api.ApiError && e.status === 422) {
        fill(status, null);
        fieldError(e.message);
        rule.focus();
      } else fill(status, api.errorFor(e));
      return false;
    }
  };

  const form = h('form', { class: 'form-row', id: 'threshold-form', novalidate: true },
    h('div', { class: 'field' },
      h('label', { for: rule.id = id('rule') }, 'New threshold'),
      rule,
      h('span', { class: 'hint', id: `${errId}-hint` }, 'Credits (10, or -5 for an overdraft limit) or a share of the last top-up (20%).'),
      ruleError),
    h('button', { type: 'submit' }, 'Add threshold'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const t = rule.value.trim();
    fieldError('');
    if (!t) {
      fieldError('Enter a threshold such as 10 or 20%.');
      rule.focus();
      return;
    }
    if (!looksLikeRule(t)) {
      fieldError(`"${t}" is not a threshold: give credits such as 10 or -5, or a share of the last top-up such as 20%.`);
      rule.focus();
      return;
    }
    await save(rules.concat([t]), `Threshold ${t} added.`, true);
  });

  const load = async () => {
    try {
      const r = await api.get(path, {}, { signal });
      show(r.account || {});
    } catch (e) {
      if (!signal.aborted) fill(listBox, api.errorFor(e));
    }
  };
  const section = h('section', { class: 'card', 'aria-labelledby': 'th-h', id: 'thresholds-card' },
    h('h2', { id: 'th-h' }, 'Low-balance thresholds'),
    h('p', { class: 'hint' }, 'An alert is raised when the balance falls below a threshold.'),
    listBox, form, status);
  return { section, load };
}
