// Operator: placeholder until its endpoints land.
import { h, fill } from '../dom.js';

export async function render(page) {
  fill(page, h('h1', {}, 'Operator'), h('p', {}, 'Coming with the read API.'));
  return null;
}
