// What both console pages share: the WebSocket (with the link's token, spent once), and a
// status line that says in words why a console closed, never a bare close code.
const status = document.getElementById('status');

export function show(text, kind = '') {
  status.textContent = text;
  status.className = kind;
}

function explain(code) {
  if (code === 1006) return 'the connection to the console proxy was lost';
  if (code === 1000 || code === 1005) return 'the console closed';
  return `the console closed (code ${code})`;
}

export function openSocket(kind) {
  const token = new URLSearchParams(location.search).get('token') || '';
  // the link works once: keep its token out of the history and of a reload
  history.replaceState(null, '', location.pathname);
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(
    `${scheme}//${location.host}/${kind}/ws?token=${encodeURIComponent(token)}`, ['binary']);
  ws.binaryType = 'arraybuffer';
  let said = null;
  ws.addEventListener('message', (e) => {
    if (typeof e.data !== 'string') return;
    try {
      const m = JSON.parse(e.data);
      said = m.error || m.closed || said;
    } catch (_) { /* not ours */ }
  });
  ws.addEventListener('close', (e) => show(said || e.reason || explain(e.code), 'error'));
  return ws;
}
