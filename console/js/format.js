// Text for people: times in UTC, quantities with their units, signed amounts, CSV. Amounts are
// the API's decimal strings, shown digit for digit (a sign or a unit is put beside them, never
// a rounding).

import * as dec from './decimal.js';

/** "2026-03-01T10:00:12Z" -> "2026-03-01 10:00:12" (UTC, as the API gives it). */
export function dateTime(iso) {
  if (!iso) return '';
  const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.exec(iso);
  if (!m) return iso;
  return m[4] === 'Z' || m[4] === '+00:00' ? `${m[1]} ${m[2]}` : `${m[1]} ${m[2]}${m[4]}`;
}

/** Milliseconds since the epoch of an RFC 3339 time (for chart positions only). */
export function millis(iso) {
  return Date.parse(iso);
}

/** {input_tokens: "1200", output_tokens: "300"} -> "1200 input tokens, 300 output tokens". */
export function quantities(q) {
  if (!q || typeof q !== 'object') return '';
  return Object.entries(q)
    .map(([unit, n]) => `${n} ${unit.replace(/_/g, ' ')}`)
    .join(', ');
}

/** A signed amount from credit/debit strings: "+25", "-0.96" or "0". */
export function signed(credit, debit) {
  const c = credit || '0';
  const d = debit || '0';
  const net = dec.sub(c, d);
  const sg = dec.sign(net);
  return sg > 0 ? `+${net}` : net;
}

/** "+25" for a positive decimal string, else unchanged. */
export function plus(amount) {
  return dec.sign(amount) > 0 ? `+${dec.normalize(amount)}` : amount;
}

/** Kind codes as words. */
const KINDS = {
  debit: 'Usage',
  topup: 'Top-up',
  voucher: 'Voucher',
  adjustment: 'Adjustment',
  expiry: 'Expiry',
  agent_execution: 'Agent run',
  model_call: 'Model call',
  tool_call: 'Tool call',
};
export function kind(k) {
  return KINDS[k] || k;
}

/** One CSV field (RFC 4180): quoted when it holds a comma, quote or line break; a leading
 * =, +, -, @ of text that is not a number is prefixed with ' so spreadsheets do not run it. */
export function csvField(v) {
  let t = v === null || v === undefined ? '' : String(v);
  if (/^[=+\-@\t\r]/.test(t) && !dec.isDecimal(t)) t = `'${t}`;
  return /[",\r\n]/.test(t) ? `"${t.replace(/"/g, '""')}"` : t;
}

/** Rows (arrays of strings) -> CSV text with CRLF line ends. */
export function csv(rows) {
  return rows.map((r) => r.map(csvField).join(',')).join('\r\n') + '\r\n';
}

/** Offers `text` as a file download named `name`. */
export function download(name, text, type = 'text/csv;charset=utf-8') {
  const blob = new Blob([text], { type });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

/** YYYY-MM-DD of a Date in UTC. */
export function day(d) {
  return d.toISOString().slice(0, 10);
}
