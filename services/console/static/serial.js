// The VM's serial console as a plain text terminal: what the guest writes is shown (ANSI
// escapes dropped), what you type is sent as you type it.
import { openSocket, show } from '/static/console.js';

const term = document.getElementById('term');
const ws = openSocket('serial');
const decoder = new TextDecoder();
const encoder = new TextEncoder();
const ESCAPES = /\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>]/g;

ws.addEventListener('open', () => { show('Connected', 'ok'); term.focus(); });
ws.addEventListener('message', (e) => {
  if (typeof e.data === 'string') return;
  let text = decoder.decode(e.data, { stream: true }).replace(ESCAPES, '').replace(/\r\n?/g, '\n');
  for (const ch of text) {
    if (ch === '\b' || ch === '\x7f') term.textContent = term.textContent.slice(0, -1);
    else if (ch >= ' ' || ch === '\n' || ch === '\t') term.textContent += ch;
  }
  if (term.textContent.length > 200000) term.textContent = term.textContent.slice(-100000);
  term.scrollTop = term.scrollHeight;
});

const KEYS = { Enter: '\r', Backspace: '\x7f', Tab: '\t', Escape: '\x1b', ArrowUp: '\x1b[A',
               ArrowDown: '\x1b[B', ArrowRight: '\x1b[C', ArrowLeft: '\x1b[D' };
term.addEventListener('keydown', (e) => {
  let data = KEYS[e.key];
  if (data === undefined && e.ctrlKey && e.key.length === 1) {
    data = String.fromCharCode(e.key.toUpperCase().charCodeAt(0) & 0x1f);
  } else if (data === undefined && e.key.length === 1 && !e.altKey && !e.metaKey) {
    data = e.key;
  }
  if (data === undefined || ws.readyState !== WebSocket.OPEN) return;
  e.preventDefault();
  ws.send(encoder.encode(data));
});
term.addEventListener('paste', (e) => {
  e.preventDefault();
  if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(e.clipboardData.getData('text')));
});
