"""How the app package is kept: small modules, one owner of the session state, front-end code in files.

Static checks (AST, no Streamlit run): every app module stays under the size limit; only
``app/state.py`` touches ``st.session_state``; widget keys come from ``app.state`` (a literal key
elsewhere could drift from the code that reads it); the drawing pad's HTML, CSS and JavaScript are
real files, not strings inside Python.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app import canvas

APP = Path(__file__).resolve().parent.parent / "app"
STATE_MODULE = APP / "state.py"
MAX_MODULE_LINES = 400
MAX_STRING_CHARS = 300
"""Longer string literals (docstrings aside) are front-end code or prose that belongs in a file."""
LAYOUT_HOOKS = {"container"}
"""``st.container(key=...)`` keys are CSS hooks (the ``st-key-<key>`` class), not session state."""

MODULES = sorted(APP.rglob("*.py"))


def relative(path: Path) -> str:
    return str(path.relative_to(APP.parent))


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_the_app_package_has_modules_to_check() -> None:
    assert STATE_MODULE in MODULES and len(MODULES) > 5


@pytest.mark.parametrize("path", MODULES, ids=relative)
def test_no_app_module_is_over_the_size_limit(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{relative(path)} has {lines} lines (limit {MAX_MODULE_LINES})"


def session_state_uses(module: ast.Module) -> list[int]:
    """Lines that name ``session_state`` (``st.session_state``, or an import of it)."""
    lines = []
    for node in ast.walk(module):
        if isinstance(node, ast.Attribute) and node.attr == "session_state":
            lines.append(node.lineno)
        elif isinstance(node, ast.Name) and node.id == "session_state":
            lines.append(node.lineno)
        elif isinstance(node, ast.alias) and node.name == "session_state":
            lines.append(node.lineno)
    return lines


def literal_widget_keys(module: ast.Module) -> list[int]:
    """Lines of calls (other than layout containers) whose ``key=`` is a string literal or f-string."""
    lines = []
    for node in ast.walk(module):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name in LAYOUT_HOOKS:
            continue
        for keyword in node.keywords:
            literal = isinstance(keyword.value, ast.JoinedStr) or (
                isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, str))
            if keyword.arg == "key" and literal:
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("path", [p for p in MODULES if p != STATE_MODULE], ids=relative)
def test_only_the_state_module_touches_the_session_state(path: Path) -> None:
    module = tree(path)
    assert session_state_uses(module) == [], f"{relative(path)} uses st.session_state: go through app.state"
    assert literal_widget_keys(module) == [], f"{relative(path)} spells a widget key: use app.state's"


def test_the_checks_see_what_they_look_for() -> None:
    """The AST checks above recognise the patterns they forbid (so an empty result means something)."""
    offending = ast.parse('st.session_state["ws"] = 1\nst.toggle("x", key="auto_run")\n'
                          'st.button("", key=f"del-{id}")\nst.container(key="builder")\n')
    assert session_state_uses(offending) == [1]
    assert literal_widget_keys(offending) == [2, 3]


def long_strings(module: ast.Module) -> list[tuple[int, int]]:
    """(line, length) of string literals over the limit that are not docstrings."""
    docstrings = set()
    for node in ast.walk(module):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
        # An attribute docstring: a bare string right after an assignment.
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for before, after in zip(body, body[1:]):
                if isinstance(before, (ast.Assign, ast.AnnAssign)) and isinstance(after, ast.Expr) \
                        and isinstance(after.value, ast.Constant):
                    docstrings.add(id(after.value))
    return [(node.lineno, len(node.value)) for node in ast.walk(module)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and len(node.value) > MAX_STRING_CHARS]


@pytest.mark.parametrize("path", MODULES, ids=relative)
def test_no_front_end_code_inside_python_strings(path: Path) -> None:
    assert long_strings(tree(path)) == [], f"{relative(path)} has long string literals: move them to files"


def test_the_pad_is_read_from_its_files() -> None:
    folder = APP / "pad"
    assert canvas.PAD_HTML == (folder / "pad.html").read_text(encoding="utf-8")
    assert canvas.PAD_CSS == (folder / "pad.css").read_text(encoding="utf-8")
    assert canvas.PAD_JS == (folder / "pad.js").read_text(encoding="utf-8")
    assert "<canvas" in canvas.PAD_HTML and "export default function" in canvas.PAD_JS
    assert ".bar button" in canvas.PAD_CSS


def test_the_page_styles_are_a_file_streamlit_keeps() -> None:
    """``st.html`` sanitises with DOMPurify, which drops a whole style element whose text looks like
    markup (a ``<`` before a letter or ``/``): one such comment would silently unstyle the page."""
    from app import ui

    css = ui.PAGE_CSS.read_text(encoding="utf-8")
    assert ui.PAGE_CSS.suffix == ".css" and ".st-key-predictions" in css
    assert "<" not in css
