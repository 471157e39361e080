// The VM's screen in noVNC (the Debian package's, served by the proxy at /novnc/).
import RFB from '/novnc/core/rfb.js';
import { openSocket, show } from '/static/console.js';

const ws = openSocket('graphics');
const rfb = new RFB(document.getElementById('screen'), ws);
rfb.scaleViewport = true;
rfb.addEventListener('connect', () => show('Connected', 'ok'));
rfb.addEventListener('desktopname', (e) => { document.title = `${e.detail.name} – screen`; });
document.getElementById('cad').addEventListener('click', () => rfb.sendCtrlAltDel());
window.ckConsole = rfb; // for tests and the curious
