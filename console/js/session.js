// The signed-in session, kept in sessionStorage only (this tab, until it is closed or the
// person signs out): {key, account, operator}. Never in localStorage, a cookie or a URL.

const KEY = 'usage-aggregator.console.session';

/** The session, or null when signed out. */
export function session() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY));
  } catch {
    return null;
  }
}

/** Stores the session (null signs out). */
export function saveSession(s) {
  if (s) sessionStorage.setItem(KEY, JSON.stringify(s));
  else sessionStorage.removeItem(KEY);
}
