// The console's shell: sign-in (the key lives in sessionStorage only: this tab, until it is
// closed or the person signs out), hash routes (#/transactions?account=A&from=...), the
// navigation, focus and announcements on page change, and one page module per route.

import { h, fill, announce } from './dom.js';
import * as api from './api.js';
import { session, saveSession } from './session.js';
import { route, currentAccount, go, href } from './router.js';

const PAGES = {
  transactions: { title: 'Transactions', load: () => import('./pages/transactions.js') },
  usage: { title: 'Usage', load: () => import('./pages/usage.js') },
  live: { title: 'Live', load: () => import('./pages/live.js') },
  credits: { title: 'Credits', load: () => import('./pages/credits.js') },
  operator: { title: 'Operator', load: () => import('./pages/operator.js'), operator: true },
};

let controller = null;
let stopPage = null;

let renderedHash = null;

async function render() {
  renderedHash = window.location.hash;
  const s = session();
  const signIn = document.getElementById('sign-in');
  const page = document.getElementById('page');
  const nav = document.getElementById('nav');
  const who = document.getElementById('who');
  const acctForm = document.getElementById('account-form');
  if (controller) controller.abort();
  if (stopPage) {
    try { stopPage(); } catch { /* ignore */ }
    stopPage = null;
  }
  controller = new AbortController();
  if (!s) {
    signIn.hidden = false;
    page.hidden = true;
    nav.hidden = true;
    who.hidden = true;
    acctForm.hidden = true;
    document.title = 'Sign in · Credits console';
    return;
  }
  signIn.hidden = true;
  page.hidden = false;
  nav.hidden = false;
  who.hidden = false;
  document.querySelector('[data-operator]').hidden = !s.operator;
  document.getElementById('who-text').textContent = s.operator ? 'Operator' : `Account ${s.account}`;
  const r = route();
  if (!r.page) r.page = s.operator && !currentAccount() ? 'operator' : 'transactions';
  const def = PAGES[r.page];
  acctForm.hidden = !s.operator || r.page === 'operator';
  const input = document.getElementById('account-input');
  if (document.activeElement !== input) input.value = currentAccount();
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.page === r.page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
    a.href = href(a.dataset.page, {});
  }
  if (!def) {
    fill(page, h('h1', { tabindex: '-1' }, 'Not found'), h('p', {}, `There is no page "${r.page}".`));
    done(page, r.page);
    return;
  }
  document.title = `${def.title} · Credits console`;
  if (def.operator && !s.operator) {
    fill(page, h('h1', { tabindex: '-1' }, def.title), h('p', { class: 'error', role: 'alert' }, 'The operator pages need the operator token. Sign in with it to see them.'));
    done(page, r.page);
    return;
  }
  const account = currentAccount();
  if (!def.operator && !account) {
    fill(page, h('h1', { tabindex: '-1' }, def.title), h('p', {}, 'Enter an account above to see its figures.'));
    done(page, r.page);
    return;
  }
  page.setAttribute('aria-busy', 'true');
  const mod = await def.load();
  const signal = controller.signal;
  try {
    stopPage = await mod.render(page, { account, params: r.params, sub: r.sub, signal, session: s });
  } catch (e) {
    if (signal.aborted) return;
    fill(page, h('h1', { tabindex: '-1' }, def.title), api.errorFor(e));
  } finally {
    if (!signal.aborted) page.removeAttribute('aria-busy');
  }
  if (!signal.aborted) done(page, r.page);
}

let movedFocus = false;
let renders = 0;

/** After a page is shown: focus its heading (not on the first load) and mark the body
 * (`data-ready="PAGE N"`, for tests and scripts waiting for a page). */
function done(page, name) {
  if (movedFocus) focusHeading(page);
  movedFocus = true;
  renders += 1;
  document.body.dataset.ready = `${name} ${renders}`;
  // A User Timing mark (DevTools' timeline, the first-paint benchmark): "ready:PAGE".
  if (window.performance && performance.mark) performance.mark(`ready:${name}`);
}

function focusHeading(page) {
  const h1 = page.querySelector('h1');
  if (h1) {
    h1.setAttribute('tabindex', '-1');
    h1.focus({ preventScroll: false });
  }
}

async function signInSubmit(ev) {
  ev.preventDefault();
  const key = document.getElementById('key-input').value.trim();
  const typed = document.getElementById('sign-in-account').value.trim();
  const err = document.getElementById('sign-in-error');
  err.textContent = '';
  if (!key) {
    err.textContent = 'Enter an API key or the operator token.';
    document.getElementById('key-input').focus();
    return;
  }
  // Ask the service who this credential is (GET /v1/whoami): an account key says its account.
  saveSession({ key, account: '', operator: false });
  let who;
  try {
    who = await api.get('/v1/whoami');
  } catch (e) {
    saveSession(null);
    if (e instanceof api.ApiError && e.status === 401) err.textContent = 'This key or token was not accepted.';
    else if (e instanceof api.ApiError && e.status === 429) err.textContent = `Too many failed attempts from this address: ${e.message}`;
    else err.textContent = `Cannot sign in now: ${e.message}`;
    document.getElementById('key-input').focus();
    return;
  }
  const operator = who.scope === 'operator';
  const account = operator ? typed : who.account_id;
  saveSession({ key, account, operator });
  document.getElementById('key-input').value = '';
  announce(operator ? 'Signed in as operator' : `Signed in to account ${account}`);
  go(operator && !account ? 'operator' : 'transactions', account ? { account } : {});
}

function signOut() {
  saveSession(null);
  history.replaceState(null, '', '#/');
  announce('Signed out');
  render();
  document.getElementById('key-input').focus();
}

function init() {
  // The skip link moves focus to the content; followed as a link it would set the hash the
  // router reads as a page (#main: "no page main").
  document.querySelector('a.skip').addEventListener('click', (ev) => {
    ev.preventDefault();
    document.getElementById('main').focus();
  });
  document.getElementById('sign-in-form').addEventListener('submit', signInSubmit);
  document.getElementById('sign-out').addEventListener('click', signOut);
  document.getElementById('account-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const a = document.getElementById('account-input').value.trim();
    const r = route();
    const page = PAGES[r.page] && !PAGES[r.page].operator ? r.page : 'transactions';
    go(page, { account: a });
  });
  api.onUnauthorized.add(() => {
    if (!session()) return;
    saveSession(null);
    render();
    document.getElementById('sign-in-error').textContent = 'The key was refused (wrong, revoked or expired): sign in again.';
  });
  // Back/forward and edited URLs; go() renders itself.
  const onNav = () => {
    if (window.location.hash !== renderedHash) render();
  };
  window.addEventListener('hashchange', onNav);
  window.addEventListener('console:route', () => render());
  window.addEventListener('popstate', onNav);
  render();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
else init();
