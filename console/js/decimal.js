// Exact decimal arithmetic on the API's decimal strings ("0.96", "-5.25", "1200"), with BigInt
// scaled integers. Money never goes through a JS Number: sums, differences and comparisons are
// exact to the last digit, and results are decimal strings again (trailing zeros dropped, as
// the API writes them). The only Number that leaves this module is a chart position
// (position()), a pixel count, never an amount.

const RE = /^([+-])?(\d+)(?:\.(\d*))?$/;

/** Parses a decimal string into {v: BigInt, s: scale}; throws RangeError naming the value. */
export function parse(text) {
  if (typeof text !== 'string') throw new TypeError(`not a decimal string: ${String(text)}`);
  const m = RE.exec(text.trim());
  if (!m) throw new RangeError(`not a decimal: "${text}"`);
  const frac = m[3] || '';
  let v = BigInt(m[2] + frac);
  if (m[1] === '-') v = -v;
  return { v, s: frac.length };
}

/** True when `text` is a decimal string this module reads. */
export function isDecimal(text) {
  return typeof text === 'string' && RE.test(text.trim());
}

const P10 = [1n];
function pow10(n) {
  while (P10.length <= n) P10.push(P10[P10.length - 1] * 10n);
  return P10[n];
}

function rescale(d, s) {
  return d.v * pow10(s - d.s);
}

function align(a, b) {
  const s = Math.max(a.s, b.s);
  return [rescale(a, s), rescale(b, s), s];
}

/** The decimal string of v × 10^-s, without trailing zeros ("-0" is "0"). */
export function format(v, s) {
  let neg = v < 0n;
  let digits = (neg ? -v : v).toString();
  if (s > 0) {
    digits = digits.padStart(s + 1, '0');
    let int = digits.slice(0, digits.length - s);
    let frac = digits.slice(digits.length - s).replace(/0+$/, '');
    digits = frac ? `${int}.${frac}` : int;
  }
  if (digits === '0') neg = false;
  return neg ? `-${digits}` : digits;
}

function str(d) {
  return format(d.v, d.s);
}

/** a + b */
export function add(a, b) {
  const [x, y, s] = align(parse(a), parse(b));
  return format(x + y, s);
}

/** a - b */
export function sub(a, b) {
  const [x, y, s] = align(parse(a), parse(b));
  return format(x - y, s);
}

/** -a */
export function neg(a) {
  const d = parse(a);
  return format(-d.v, d.s);
}

/** |a| */
export function abs(a) {
  const d = parse(a);
  return format(d.v < 0n ? -d.v : d.v, d.s);
}

/** -1, 0 or 1 as a < b, a = b, a > b (by value: "1.50" equals "1.5"). */
export function cmp(a, b) {
  const [x, y] = align(parse(a), parse(b));
  return x < y ? -1 : x > y ? 1 : 0;
}

/** -1, 0 or 1: the sign of a. */
export function sign(a) {
  const d = parse(a);
  return d.v < 0n ? -1 : d.v > 0n ? 1 : 0;
}

/** The same value written as the API writes it (no trailing zeros, no "+", "-0" is "0"). */
export function normalize(a) {
  return str(parse(a));
}

/** The exact sum of a list of decimal strings ("0" for an empty list). */
export function sum(list) {
  let acc = { v: 0n, s: 0 };
  for (const t of list) {
    const d = parse(t);
    const s = Math.max(acc.s, d.s);
    acc = { v: rescale(acc, s) + rescale(d, s), s };
  }
  return str(acc);
}

/** The smaller and larger of a list of decimal strings: [min, max]; [null, null] if empty. */
export function extent(list) {
  let lo = null;
  let hi = null;
  for (const t of list) {
    if (lo === null || cmp(t, lo) < 0) lo = t;
    if (hi === null || cmp(t, hi) > 0) hi = t;
  }
  return [lo, hi];
}

/**
 * Where `a` lies between `lo` and `hi`, as a share of `size` (a pixel count), rounded down to
 * 1/100 of a pixel; clamped to [0, size]. Exact: BigInt arithmetic, then one Number for the
 * pixel position. Returns 0 when lo = hi.
 */
export function position(a, lo, hi, size) {
  const d = [parse(a), parse(lo), parse(hi)];
  const s = Math.max(d[0].s, d[1].s, d[2].s);
  const [x, l, h] = d.map((p) => rescale(p, s));
  if (h === l) return 0;
  const steps = BigInt(Math.round(size * 100));
  let q = ((x - l) * steps) / (h - l);
  if (q < 0n) q = 0n;
  if (q > steps) q = steps;
  return Number(q) / 100;
}

/** floor(a / step) * step and ceil(a / step) * step, step > 0. */
function floorTo(x, step) {
  let q = x / step;
  if (x < 0n && q * step !== x) q -= 1n;
  return q * step;
}

/**
 * About `count` round tick values (1, 2 or 5 × a power of ten apart) covering [lo, hi], as
 * decimal strings, lowest first. lo = hi gives ticks around that value.
 */
export function ticks(lo, hi, count = 5) {
  let a = parse(lo);
  let b = parse(hi);
  if (cmp(lo, hi) > 0) [a, b] = [b, a];
  // Work at a scale fine enough for steps down to 10^-18.
  const S = Math.max(a.s, b.s, 18);
  let x = rescale(a, S);
  let y = rescale(b, S);
  if (x === y) {
    const pad = x === 0n ? pow10(S) : (x < 0n ? -x : x) / 10n || 1n;
    x -= pad;
    y += pad;
  }
  const span = y - x;
  const n = BigInt(Math.max(1, count));
  let step = null;
  for (let k = 0; k <= S + 30 && step === null; k += 1) {
    for (const m of [1n, 2n, 5n]) {
      const st = m * pow10(k);
      if (st * n >= span) {
        step = st;
        break;
      }
    }
  }
  const first = floorTo(x, step);
  let last = floorTo(y, step);
  if (last < y) last += step;
  const out = [];
  for (let t = first; t <= last && out.length < 1000; t += step) out.push(format(t, S));
  return out;
}
