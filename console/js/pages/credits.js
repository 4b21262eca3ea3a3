// Credits: the balance, a top-up (minimum 10: a refusal is shown with the ledger's reason), a
// voucher redemption, the account's low-balance thresholds (./thresholds.js) and its recent
// alerts (./alerts.js).
// Data: GET /v1/accounts/{id}/balance; POST /v1/accounts/{id}/topups (operator token only: a
// top-up is a payment) and /redemptions (the account's key or the operator).

import { h, fill, field, announce } from '../dom.js';
import * as api from '../api.js';
import * as dec from '../decimal.js';
import { thresholds } from './thresholds.js';
import { alerts } from './alerts.js';

function reference() {
  const r = new Uint8Array(8);
  crypto.getRandomValues(r);
  return `console-${Array.from(r, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

/** The text of an answer to a grant or a redemption: verdict, amount, reason. */
export function verdictText(status, body) {
  if (status === 422 || (body && body.reason && !body.grant_id)) {
    return { ok: false, text: `Refused (${body.reason || 'refused'}): ${body.message || body.error || ''}`.trim() };
  }
  const v = body && (body.verdict || body.outcome || body.status);
  if (status === 202) return { ok: true, text: `Accepted: ${body.status || body.error || 'the ledger applies it in about a second'}` };
  if (v === 'refused') return { ok: false, text: `Refused (${body.reason}): ${body.message || ''}` };
  const amount = body && (body.amount || body.credits);
  return { ok: true, text: `${v === 'already_applied' ? 'Already applied' : 'Applied'}${amount ? `: ${amount} credits` : ''}${body.grant_id ? ` (grant ${body.grant_id})` : ''}.` };
}

export async function render(page, { account, signal, session }) {
  const base = `/v1/accounts/${api.seg(account)}`;
  const heading = h('h1', {}, 'Credits');
  const balanceOut = h('div', {});
  const loadBalance = async () => {
    try {
      const b = await api.get(`${base}/balance`, {}, { signal });
      fill(balanceOut, h('p', { class: 'figure' }, h('span', { id: 'balance' }, b.balance), ' credits'),
        h('p', { class: 'hint' }, `${b.entries} entries; the last at ${b.last_entry_at.replace('T', ' ').replace('Z', '')} UTC.`));
    } catch (e) {
      if (!signal.aborted) fill(balanceOut, api.errorFor(e));
    }
  };

  // After a grant: the balance a few times over the next seconds (until it changes).
  const refreshBalance = () => {
    const was = (balanceOut.querySelector('#balance') || {}).textContent;
    let n = 0;
    const again = async () => {
      if (signal.aborted) return;
      await loadBalance();
      n += 1;
      const now = (balanceOut.querySelector('#balance') || {}).textContent;
      if (now === was && n < 8) setTimeout(again, 1000);
    };
    setTimeout(again, 500);
  };

  // Top-up.
  const amount = h('input', { name: 'amount', inputmode: 'decimal', autocomplete: 'off', required: true, placeholder: '25.00' });
  const ref = h('input', { name: 'reference', autocomplete: 'off', required: true, value: reference() });
  const topupOut = h('div', { id: 'topup-result', 'aria-live': 'polite' });
  const topupForm = h('form', { class: 'form-row', id: 'topup-form', novalidate: true },
    field('Amount (credits)', amount, 'At least the minimum top-up (10 by default).'),
    field('Payment reference', ref, 'Idempotency key: the same reference is applied once.'),
    h('button', { type: 'submit' }, 'Top up'));
  topupForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const a = amount.value.trim();
    if (!dec.isDecimal(a)) {
      fill(topupOut, h('p', { class: 'error', role: 'alert' }, `Amount: "${a}" is not a decimal number (write it like 25 or 25.50).`));
      amount.focus();
      return;
    }
    const btn = topupForm.querySelector('button');
    btn.disabled = true;
    fill(topupOut, h('p', { class: 'loading' }, 'Sending…'));
    try {
      const r = await api.post(`${base}/topups`, { amount: a, reference: ref.value.trim() });
      const v = verdictText(r.status, r.body);
      fill(topupOut, h('p', { class: v.ok ? 'ok' : 'error', role: v.ok ? 'status' : 'alert' }, v.text));
      ref.value = reference();
      refreshBalance();
    } catch (e) {
      if (e instanceof api.ApiError && e.status === 422) {
        const v = verdictText(422, e.body);
        fill(topupOut, h('p', { class: 'error', role: 'alert', dataset: { reason: e.reason || '' } }, v.text));
      } else fill(topupOut, api.errorFor(e));
    } finally {
      btn.disabled = false;
    }
  });

  // Voucher.
  const code = h('input', { name: 'code', autocomplete: 'off', spellcheck: 'false', required: true });
  const redeemOut = h('div', { id: 'redeem-result', 'aria-live': 'polite' });
  const redeemForm = h('form', { class: 'form-row', id: 'redeem-form', novalidate: true },
    field('Voucher code', code),
    h('button', { type: 'submit' }, 'Redeem'));
  redeemForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const btn = redeemForm.querySelector('button');
    btn.disabled = true;
    fill(redeemOut, h('p', { class: 'loading' }, 'Redeeming…'));
    try {
      const r = await api.post(`${base}/redemptions`, { code: code.value.trim() });
      const b = r.body || {};
      fill(redeemOut, h('p', { class: 'ok', role: 'status' }, r.status === 202 ? `Sent; no answer yet: ${b.error || ''}` : `Redeemed: ${b.credits || b.amount || ''} credits${b.grant_id ? ` (grant ${b.grant_id})` : ''}.`));
      code.value = '';
      refreshBalance();
    } catch (e) {
      if (e instanceof api.ApiError && e.status === 422) {
        fill(redeemOut, h('p', { class: 'error', role: 'alert', dataset: { reason: e.body.outcome || e.reason || '' } }, `Refused (${e.body.outcome || e.reason}): ${e.body.message || e.message}`));
      } else fill(redeemOut, api.errorFor(e));
    } finally {
      btn.disabled = false;
    }
  });

  const th = thresholds(account, signal);
  const al = alerts(account, signal);
  fill(page, heading, h('p', { class: 'lead' }, `Account ${account}`),
    h('section', { class: 'card', 'aria-labelledby': 'cb-h' }, h('h2', { id: 'cb-h' }, 'Balance'), balanceOut),
    h('section', { class: 'card', 'aria-labelledby': 'tu-h' }, h('h2', { id: 'tu-h' }, 'Top up'),
      session.operator
        ? [topupForm, topupOut]
        : h('p', { id: 'topup-note' }, 'A top-up is a payment: it comes from the payment service, or from an operator signed in with the operator token. Vouchers can be redeemed here.')),
    h('section', { class: 'card', 'aria-labelledby': 'rv-h' }, h('h2', { id: 'rv-h' }, 'Redeem a voucher'), redeemForm, redeemOut),
    th.section, al.section);
  await Promise.all([loadBalance(), th.load(), al.load()]);
  announce('Credits loaded');
  return null;
}
