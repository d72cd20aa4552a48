"""The drawing pad: an inline HTML canvas (Streamlit Custom Components v2) that hands its drawing
to Python as a PNG data URL. Its HTML, CSS and JavaScript are the files in ``app/pad/``.

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
from collections.abc import Callable, MutableMapping
from importlib import resources
from typing import Any

import streamlit as st

MAX_DATA_URL_CHARS = 8_000_000
"""A drawing is a few kB; anything this large is refused before decoding."""

PAD_FILES = resources.files(__package__) / "pad"
"""The pad's markup, styles and behaviour: ``pad.html``, ``pad.css`` and ``pad.js``, read at import."""
PAD_HTML = (PAD_FILES / "pad.html").read_text(encoding="utf-8")
PAD_CSS = (PAD_FILES / "pad.css").read_text(encoding="utf-8")
PAD_JS = (PAD_FILES / "pad.js").read_text(encoding="utf-8")

_pad = st.components.v2.component("meta_playground_drawing_pad", html=PAD_HTML, css=PAD_CSS, js=PAD_JS)


def _noop() -> None:
    """State-change callback: handling happens in the script run that follows."""


def drawing_pad(key: str, *, label: str = "Add", hint: str = "", full: bool = False, full_text: str = "",
                size: int = 150, seen: MutableMapping[str, str] | None = None, aria: str = "",
                focus: str = "", on_submit: Callable[[], None] = _noop) -> dict[str, Any] | None:
    """Mount a pad; return a *new* submission ``{"png": data_url, "nonce": ...}`` once, else None.

    ``seen`` maps pad keys to the last nonce handled (kept in the session's own state), so a
    submission is returned exactly once however many reruns follow. ``on_submit`` runs before the
    rerun that hands it over (it may choose which fragments rerun; the drawing is handled in the run).
    """
    data = {"label": label, "hint": hint, "full": full, "fullText": full_text, "size": size, "id": key,
            "aria": aria or label, "focus": focus}
    result = _pad(key=key, data=data, on_submission_change=on_submit, width="content")
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
