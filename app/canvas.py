"""The drawing pad: an inline HTML canvas (Streamlit Custom Components v2) that hands its drawing
to Python as a PNG data URL.

Everything about drawing happens in the browser (strokes, undo, clear), so drawing never waits for
Python. Only "Add" talks to the server: the pad sets its state value ``submission`` to
``{"png": "data:image/png;base64,...", "nonce": "<unique>", "strokes": n}``. Python handles each
nonce once (see :func:`drawing_pad`), so reruns never add the same drawing twice, and tests can
inject a drawing by setting that state through ``st.session_state[pad_key]``.

Keyboard (when the pad has focus): Enter adds, Ctrl/Cmd+Z undoes, Escape clears.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import MutableMapping
from typing import Any

import streamlit as st

MAX_DATA_URL_CHARS = 8_000_000
"""A drawing is a few kB; anything this large is refused before decoding."""

PAD_HTML = """
<div class="pad" tabindex="-1">
  <div class="surface">
    <canvas class="ink" aria-label="drawing pad" tabindex="0"></canvas>
    <div class="guide" aria-hidden="true"></div>
  </div>
  <div class="bar">
    <button class="undo" type="button" title="Undo the last stroke (Ctrl+Z)">&#8630; Undo</button>
    <button class="clear" type="button" title="Clear the pad (Esc)">Clear</button>
    <button class="add" type="button" title="Add this drawing (Enter)">Add</button>
  </div>
  <div class="msg" role="status" aria-live="polite"></div>
</div>
"""

PAD_CSS = """
.pad { display: flex; flex-direction: column; gap: 6px; width: fit-content; font-family: var(--st-font, sans-serif);
       font-size: 13px; color: var(--st-text-color, #262730); outline: none; }
.surface { position: relative; border: 1px solid var(--st-border-color, #d5d7de); border-radius: 8px;
           background: #fff; overflow: hidden; box-shadow: inset 0 0 0 1px rgba(0,0,0,0.02); }
.surface:focus-within { border-color: var(--st-primary-color, #ff4b4b); }
canvas.ink { display: block; touch-action: none; cursor: crosshair; outline: none; }
.guide { position: absolute; inset: 14%; border: 1px dashed rgba(0,0,0,0.10); border-radius: 6px;
         pointer-events: none; }
.pad.full .surface { opacity: 0.55; }
.bar { display: flex; gap: 4px; }
.bar button { flex: 1 1 auto; font: inherit; padding: 3px 6px; border-radius: 6px; cursor: pointer;
              border: 1px solid var(--st-border-color, #d5d7de); background: var(--st-background-color, #fff);
              color: var(--st-text-color, #262730); white-space: nowrap; }
.bar button:hover:not(:disabled) { border-color: var(--st-primary-color, #ff4b4b);
                                   color: var(--st-primary-color, #ff4b4b); }
.bar button.add { background: var(--st-primary-color, #ff4b4b); border-color: var(--st-primary-color, #ff4b4b);
                  color: #fff; font-weight: 600; }
.bar button.add:hover:not(:disabled) { color: #fff; filter: brightness(0.93); }
.bar button:disabled { opacity: 0.45; cursor: default; }
.msg { min-height: 1.2em; font-size: 12px; line-height: 1.2em; color: var(--st-text-color, #555); opacity: 0.85;
       max-width: 100%; }
.msg.error { color: var(--st-red-text-color, #bd4043); opacity: 1; }
.msg.ok { color: var(--st-green-text-color, #158237); opacity: 1; }
"""

PAD_JS = """
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
      pad.redraw(); pad.refresh(); pad.say('Added \\u2713', 'ok');
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
"""

_pad = st.components.v2.component("meta_playground_drawing_pad", html=PAD_HTML, css=PAD_CSS, js=PAD_JS)


def _noop() -> None:
    """State-change callback: handling happens in the script run that follows."""


def drawing_pad(key: str, *, label: str = "Add", hint: str = "", full: bool = False, full_text: str = "",
                size: int = 150, seen: MutableMapping[str, str] | None = None, aria: str = "",
                focus: str = "") -> dict[str, Any] | None:
    """Mount a pad; return a *new* submission ``{"png": data_url, "nonce": ...}`` once, else None.

    ``seen`` maps pad keys to the last nonce handled (kept in the session's own state), so a
    submission is returned exactly once however many reruns follow.
    """
    data = {"label": label, "hint": hint, "full": full, "fullText": full_text, "size": size, "id": key,
            "aria": aria or label, "focus": focus}
    result = _pad(key=key, data=data, on_submission_change=_noop, width="content")
    submission = result.get("submission") if result is not None else None
    if not isinstance(submission, dict):
        return None
    nonce = str(submission.get("nonce") or "")
    if not nonce or (seen is not None and seen.get(key) == nonce):
        return None
    if seen is not None:
        seen[key] = nonce
    return submission


class DrawingDecodeError(ValueError):
    """The pad sent something that is not a PNG data URL (user-facing message)."""


def decode_data_url(url: object) -> bytes:
    """``data:image/png;base64,...`` -> PNG bytes; raises :class:`DrawingDecodeError`."""
    if not isinstance(url, str) or not url.startswith("data:image/") or "," not in url:
        raise DrawingDecodeError("The drawing could not be read (not an image data URL).")
    if len(url) > MAX_DATA_URL_CHARS:
        raise DrawingDecodeError("The drawing is too large to read.")
    header, payload = url.split(",", 1)
    if ";base64" not in header:
        raise DrawingDecodeError("The drawing could not be read (not base64-encoded).")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise DrawingDecodeError("The drawing could not be read (corrupt data).") from None


def png_data_url(png: bytes) -> str:
    """PNG bytes -> data URL (what the pad sends); used by tests to inject drawings."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
