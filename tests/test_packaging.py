"""pyproject.toml declares what requirements.txt installs: the runtime dependencies and a test extra."""

from __future__ import annotations

import re
import tomllib

from engine.paths import REPO_ROOT


def requirement_lines(text: str) -> list[str]:
    """Requirement specifiers of a requirements file, without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def normalised(spec: str) -> str:
    return re.sub(r"\s+", "", spec).lower()


def test_pyproject_declares_what_requirements_txt_installs() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = [normalised(spec) for spec in project["dependencies"]]
    test = [normalised(spec) for spec in project["optional-dependencies"]["test"]]
    installed = [normalised(spec) for spec in requirement_lines((REPO_ROOT / "requirements.txt").read_text())]
    assert sorted(runtime + test) == sorted(installed)
    assert "torch==2.13.0" in runtime  # the pinned CPU build
    assert {"pytest>=8.0", "pytest-timeout>=2.3"} <= set(test) and not {"pytest>=8.0"} & set(runtime)
