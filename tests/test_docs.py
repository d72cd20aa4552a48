"""The documentation stays true to the repository.

Static checks of README.md and docs/*.md (no network, no imports of the documented code):

* the README stays short (at most ``MAX_README_LINES``) and opens with the two commands;
* every docs page is linked from the README;
* every relative link and image points to an existing file, and every ``#anchor`` to a heading of
  its page (GitHub's heading slugs);
* every dotted module name (``engine.compare.compare``, ``python -m benchmarks.bench``) names a module
  of this repository, and an attribute after it a top-level definition of that module (or a member
  of that class);
* every concrete repository path in a code span (``engine/learners/__init__.py``) exists;
* no wording from the project's tracker ("the issue's configuration", "target set").

A failure lists every stale reference at once, so a moved file or renamed function shows up with
all the pages that still name it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS_DIR = ROOT / "docs"
DOCS = sorted(DOCS_DIR.glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 200

FENCE = re.compile(r"^(```|~~~)(\w*).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]+`")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...

PACKAGES = ("engine", "app", "benchmarks", "tools")
"""Top-level packages of this repository: a dotted name starting with one of them must resolve."""
DOTTED_NAME = re.compile(r"(?<![\w./-])((?:%s)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)" % "|".join(PACKAGES))
FILE_SUFFIXES = {"py", "md", "json", "sh", "txt", "png", "safetensors", "jsonl", "toml", "css", "js", "html"}
"""A last component like these makes ``app.py``-style text a file name, not a module path."""

PATH_ROOTS = ("app", "engine", "benchmarks", "tools", "models", "tests", "assets", "docs")
"""Top-level folders whose concrete paths in code spans must exist (``runs/`` is never committed)."""
PLACEHOLDER = re.compile(r"[<>*{}$]|\.\.\.|\b[A-Z][A-Z_]{2,}\b")
"""A path with ``<run>``, ``*``, ``...`` or an upper-case placeholder (``RUN``) names no one file."""

TRACKER_WORDING = (
    re.compile(r"\bthe issue\b", re.I),
    re.compile(r"\bissue's\b", re.I),
    re.compile(r"\btarget set\b", re.I),
    re.compile(r"\bas the benchmark checks them\b", re.I),
)
"""Describe things by what they are ("the app's default set"), not by the tracker that asked for them."""


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


@cache
def text_of(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def prose_of(page: Path) -> str:
    """The page without fenced blocks, inline code and HTML comments (where links are not links)."""
    text = FENCE.sub("", text_of(page))
    text = HTML_COMMENT.sub("", text)
    return INLINE_CODE.sub("", text)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces as '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors_of(page: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for match in HEADING.finditer(FENCE.sub("", text_of(page))):
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(anchors)


@dataclass(frozen=True)
class Reference:
    page: Path
    target: str

    def __str__(self) -> str:
        return f"{relative(self.page)}: {self.target}"


def links_of(page: Path) -> list[str]:
    return [match.group(1) for match in LINK.finditer(prose_of(page))]


def broken_link(page: Path, target: str) -> str | None:
    """Why ``target`` (a link on ``page``) leads nowhere; None when it is fine or external."""
    if EXTERNAL.match(target):
        return None
    path_part, _, anchor = target.partition("#")
    destination = (page.parent / path_part).resolve() if path_part else page
    if not destination.exists():
        return "no such file"
    if ROOT not in destination.parents and destination != ROOT:
        return "outside the repository"
    if anchor and destination.suffix == ".md" and anchor not in anchors_of(destination):
        return f"no heading with anchor #{anchor}"
    return None


# --------------------------------------------------------------------------- module names


def module_file(parts: list[str]) -> Path | None:
    """The file of module ``parts`` (``engine/compare.py`` or ``engine/data/__init__.py``), if any."""
    base = ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


@cache
def top_level_names(source: Path) -> dict[str, ast.AST]:
    """Names a module defines or imports at its top level (classes map to their node)."""
    names: dict[str, ast.AST] = {}
    for node in ast.parse(source.read_text(encoding="utf-8"), filename=str(source)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names[name.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
    return names


def class_members(node: ast.ClassDef) -> set[str]:
    members = set()
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            members.add(item.name)
        elif isinstance(item, ast.Assign):
            members.update(t.id for t in item.targets if isinstance(t, ast.Name))
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            members.add(item.target.id)
    return members


def unresolved_module_name(name: str) -> str | None:
    """Why the dotted ``name`` does not resolve in this repository; None when it does."""
    parts = name.split(".")
    for length in range(len(parts), 0, -1):
        source = module_file(parts[:length])
        if source is not None:
            break
    else:
        return "no such package"
    rest = parts[length:]
    if not rest:
        return None
    if rest[0] not in top_level_names(source):
        return f"no module {'/'.join(parts[: length + 1])}(.py) and {relative(source)} defines no {rest[0]!r}"
    node = top_level_names(source)[rest[0]]
    if len(rest) > 1 and isinstance(node, ast.ClassDef) and rest[1] not in class_members(node):
        return f"class {rest[0]} in {relative(source)} has no member {rest[1]!r}"
    return None


def module_names_of(page: Path) -> list[str]:
    names = []
    for match in DOTTED_NAME.finditer(HTML_COMMENT.sub("", text_of(page))):
        name = match.group(1)
        if name.rsplit(".", 1)[-1] in FILE_SUFFIXES:
            continue
        names.append(name)
    return names


def repository_paths_of(page: Path) -> list[str]:
    """Concrete repository paths named in the page's code spans (not in fenced blocks)."""
    text = HTML_COMMENT.sub("", FENCE.sub("", text_of(page)))
    paths = []
    for span in INLINE_CODE.findall(text):
        candidate = span.strip("`").strip()
        if " " in candidate or "/" not in candidate or PLACEHOLDER.search(candidate):
            continue
        if candidate.split("/", 1)[0] in PATH_ROOTS:
            paths.append(candidate)
    return paths


# --------------------------------------------------------------------------- tests


def test_there_are_docs_pages_to_check() -> None:
    assert README.is_file() and DOCS, "README.md and docs/*.md are what these tests check"


def test_readme_is_at_most_the_line_limit() -> None:
    lines = len(text_of(README).splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (limit {MAX_README_LINES}): move detail into docs/"


def test_readme_opens_with_the_two_commands() -> None:
    sections = re.split(r"^## ", text_of(README), flags=re.M)
    assert len(sections) > 1 and sections[1].startswith("Two commands"), "the first section is 'Two commands'"
    blocks = [match.group(0) for match in FENCE.finditer(sections[1])]
    assert any("pip install -r requirements.txt" in b and "streamlit run app/main.py" in b for b in blocks)
    assert any(".venv/bin/python -m pytest --run-slow" in b for b in blocks)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in links_of(README)}
    orphans = [relative(page) for page in DOCS if page.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


def test_every_relative_link_points_to_an_existing_file_and_heading() -> None:
    broken = [f"{Reference(page, target)} ({why})" for page in PAGES for target in links_of(page)
              if (why := broken_link(page, target)) is not None]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_module_name_resolves() -> None:
    unresolved = [f"{Reference(page, name)} ({why})" for page in PAGES for name in sorted(set(module_names_of(page)))
                  if (why := unresolved_module_name(name)) is not None]
    assert not unresolved, "module names that do not resolve:\n" + "\n".join(unresolved)


def test_every_repository_path_in_code_exists() -> None:
    missing = [str(Reference(page, path)) for page in PAGES for path in sorted(set(repository_paths_of(page)))
               if not (ROOT / path).exists()]
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_no_tracker_wording(page: Path) -> None:
    text = text_of(page)
    found = [match.group(0) for pattern in TRACKER_WORDING for match in pattern.finditer(text)]
    assert not found, f"{relative(page)} speaks the tracker's language: {found}"


# --------------------------------------------------------------------------- the checkers themselves


def test_github_slugs_match_githubs_rules() -> None:
    assert github_slug("On the papers' split") == "on-the-papers-split"
    assert github_slug("`engine.kernels`: inner loops") == "enginekernels-inner-loops"
    assert github_slug("Same task, same weights: against the peers") == "same-task-same-weights-against-the-peers"


def test_the_checkers_catch_what_they_look_for() -> None:
    page = DOCS_DIR / "architecture.md"
    assert broken_link(page, "no-such-page.md") == "no such file"
    assert broken_link(page, "performance.md#no-such-heading") == "no heading with anchor #no-such-heading"
    assert broken_link(page, "performance.md#what-makes-it-fast") is None
    assert broken_link(page, "https://example.org/x") is None
    assert unresolved_module_name("engine.compare.compare") is None
    assert unresolved_module_name("engine.compare.no_such_function") is not None
    assert unresolved_module_name("engine.no_such_module") is not None
    assert unresolved_module_name("engine.learners.Learner.adapt") is None
    assert unresolved_module_name("engine.learners.base.Learner.no_such_member") is not None
