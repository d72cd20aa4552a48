// The drawing pad's behaviour (Streamlit Custom Components v2): strokes, undo, clear and "Add",
// which hands the drawing to Python as a PNG data URL in the state value `submission`.
export default function (component) {
  const { data, parentElement, setStateValue } = component;
  const root = parentElement.querySelector('.pad');
  if (!root) return;
  const cfg = Object.assign({ size: 150, label: 'Add', hint: '', full: false, fullText: '' }, data || {});
  let pad = root.__pad;
  if (!pad) {
    pad = { strokes: [], history: [], current: null, size: 0, cfg };
    root.__pad = pad;
    pad.canvas = root.querySelector('canvas.ink');
    pad.ctx = pad.canvas.getContext('2d');
    pad.msg = root.querySelector('.msg');
    pad.addBtn = root.querySelector('button.add');
    pad.undoBtn = root.querySelector('button.undo');
    pad.clearBtn = root.querySelector('button.clear');
    const scale = () => pad.canvas.width / pad.size;
    pad.say = (text, kind) => {
      pad.msg.textContent = text || pad.cfg.hint || '';
      pad.msg.className = 'msg' + (kind ? ' ' + kind : '');
    };
    pad.refresh = () => {
      pad.undoBtn.disabled = pad.history.length === 0;
      pad.clearBtn.disabled = pad.strokes.length === 0;
      pad.addBtn.disabled = !!pad.cfg.full;
    };
    pad.redraw = () => {
      const ctx = pad.ctx;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.clearRect(0, 0, pad.canvas.width, pad.canvas.height);
      ctx.setTransform(scale(), 0, 0, scale(), 0, 0);
      for (const s of pad.strokes) drawStroke(ctx, s, 0);
    };
    const drawStroke = (ctx, s, from) => {
      ctx.strokeStyle = '#111'; ctx.fillStyle = '#111';
      ctx.lineWidth = s.width; ctx.lineCap = 'round'; ctx.lineJoin = 'round';
      const p = s.points;
      if (p.length === 1) {
        ctx.beginPath(); ctx.arc(p[0][0], p[0][1], s.width / 2, 0, 2 * Math.PI); ctx.fill();
        return;
      }
      ctx.beginPath();
      const start = Math.max(0, from - 1);
      ctx.moveTo(p[start][0], p[start][1]);
      for (let i = start + 1; i < p.length; i++) ctx.lineTo(p[i][0], p[i][1]);
      ctx.stroke();
    };
    const point = (ev) => {
      const r = pad.canvas.getBoundingClientRect();
      const k = pad.size / (r.width || pad.size);
      return [(ev.clientX - r.left) * k, (ev.clientY - r.top) * k];
    };
    pad.canvas.addEventListener('pointerdown', (ev) => {
      if (ev.button !== undefined && ev.button > 0) return;
      ev.preventDefault();
      pad.canvas.focus({ preventScroll: true });
      try { pad.canvas.setPointerCapture(ev.pointerId); } catch (e) { /* synthetic events */ }
      pad.current = { width: Math.max(3, pad.size * 0.045), points: [point(ev)] };
      pad.strokes.push(pad.current);
      pad.ctx.setTransform(scale(), 0, 0, scale(), 0, 0);
      drawStroke(pad.ctx, pad.current, 0);
      pad.say('');
    });
    pad.canvas.addEventListener('pointermove', (ev) => {
      if (!pad.current) return;
      ev.preventDefault();
      const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
      const before = pad.current.points.length;
      for (const e of (events.length ? events : [ev])) pad.current.points.push(point(e));
      pad.ctx.setTransform(scale(), 0, 0, scale(), 0, 0);
      drawStroke(pad.ctx, pad.current, before);
    });
    const end = () => {
      if (!pad.current) return;
      pad.history.push({ kind: 'stroke' });
      pad.current = null;
      pad.refresh();
    };
    pad.canvas.addEventListener('pointerup', end);
    pad.canvas.addEventListener('pointercancel', end);
    pad.canvas.addEventListener('lostpointercapture', end);
    pad.undo = () => {
      const last = pad.history.pop();
      if (!last) return;
      if (last.kind === 'stroke') pad.strokes.pop();
      else if (last.kind === 'clear') pad.strokes = last.strokes;
      pad.redraw(); pad.refresh(); pad.say('');
    };
    pad.clear = () => {
      if (!pad.strokes.length) return;
      pad.history.push({ kind: 'clear', strokes: pad.strokes });
      pad.strokes = [];
      pad.redraw(); pad.refresh(); pad.say('Cleared (Undo brings it back).');
    };
    pad.add = () => {
      if (pad.cfg.full) { pad.say(pad.cfg.fullText || 'This class is full.', 'error'); return; }
      if (!pad.strokes.length) { pad.say('The pad is empty: draw a character first.', 'error'); return; }
      // Export ink on an opaque white background (what a scanned drawing looks like).
      const out = document.createElement('canvas');
      out.width = pad.canvas.width; out.height = pad.canvas.height;
      const octx = out.getContext('2d');
      octx.fillStyle = '#fff'; octx.fillRect(0, 0, out.width, out.height);
      octx.drawImage(pad.canvas, 0, 0);
      const nonce = Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 10);
      pad.send('submission', { png: out.toDataURL('image/png'), nonce, strokes: pad.strokes.length });
      pad.strokes = []; pad.history = [];
      pad.redraw(); pad.refresh(); pad.say('Added \u2713', 'ok');
    };
    pad.undoBtn.addEventListener('click', () => pad.undo());
    pad.clearBtn.addEventListener('click', () => pad.clear());
    pad.addBtn.addEventListener('click', () => pad.add());
    pad.canvas.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') { ev.preventDefault(); pad.add(); }
      else if ((ev.ctrlKey || ev.metaKey) && (ev.key === 'z' || ev.key === 'Z')) { ev.preventDefault(); pad.undo(); }
      else if (ev.key === 'Escape') { ev.preventDefault(); pad.clear(); }
    });
  }
  pad.cfg = cfg;
  pad.send = setStateValue;
  // (Re)size the canvas when the requested size changes; keep the strokes (stored in pad units).
  if (pad.size !== cfg.size) {
    const old = pad.size || cfg.size;
    const ratio = cfg.size / old;
    for (const s of pad.strokes) { s.width *= ratio; s.points = s.points.map(([x, y]) => [x * ratio, y * ratio]); }
    pad.size = cfg.size;
    const dpr = Math.max(2, Math.min(3, window.devicePixelRatio || 1));
    pad.canvas.width = Math.round(cfg.size * dpr);
    pad.canvas.height = Math.round(cfg.size * dpr);
    pad.canvas.style.width = cfg.size + 'px';
    pad.canvas.style.height = cfg.size + 'px';
    pad.redraw();
  }
  root.style.width = cfg.size + 2 + 'px';
  root.classList.toggle('full', !!cfg.full);
  pad.addBtn.textContent = cfg.label;
  pad.addBtn.title = cfg.full ? (cfg.fullText || 'This class is full') : cfg.label + ' (Enter)';
  pad.canvas.setAttribute('aria-label', cfg.aria || 'drawing pad');
  root.dataset.pad = cfg.id || '';
  if (!pad.msg.classList.contains('error') && !pad.msg.classList.contains('ok')) pad.say('');
  if (cfg.full && !pad.strokes.length) pad.say(cfg.fullText, '');
  pad.refresh();
  // Python asks for focus (a new token) when the previous class just filled up: keep drawing here.
  if (cfg.focus && cfg.focus !== pad.focusToken) {
    pad.focusToken = cfg.focus;
    setTimeout(() => {
      pad.canvas.focus({ preventScroll: true });
      root.scrollIntoView({ block: 'center', behavior: 'smooth' });
    }, 50);
  }
}
