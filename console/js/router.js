// Hash routes: #/PAGE[/SUB]?account=A&from=...; the URL says what is shown, so a page can be
// bookmarked, reloaded or edited (the API decides what the key may see, whatever the URL says).

import { session } from './session.js';

/** The current route: {page, sub, params: URLSearchParams}. */
export function route() {
  const hash = window.location.hash.replace(/^#\/?/, '');
  const [path, query] = hash.split('?');
  const parts = path.split('/');
  return { page: parts[0] || '', sub: parts.slice(1).join('/'), params: new URLSearchParams(query || '') };
}

/** The account the pages show: the URL's `account`, else the session's. */
export function currentAccount() {
  const s = session();
  const a = route().params.get('account');
  return a || (s && s.account) || '';
}

/** The hash of a page with params (empty values dropped; the account kept unless given). */
export function href(page, params = {}) {
  const p = new URLSearchParams();
  const cur = currentAccount();
  if (cur && !('account' in params) && page !== 'operator') p.set('account', cur);
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') p.set(k, v);
  const q = p.toString();
  return `#/${page}${q ? `?${q}` : ''}`;
}

/** Goes to a page (a new history entry, or the current one replaced) and shows it. */
export function go(page, params = {}, { replace = false } = {}) {
  const target = href(page, params);
  if (replace) history.replaceState(null, '', target);
  else history.pushState(null, '', target);
  window.dispatchEvent(new Event('console:route'));
}
