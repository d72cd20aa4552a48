"""tools/load_test.py: 8 headless sessions against one ``streamlit run`` on loopback, bounded.

Slow (``--run-slow``); tiny checkpoints, one round each, stopped after 400 s. It checks that every
session got the results of its comparison (none starved or lost in the shared queue); the figures
against the 2 s target come from the full run in docs/performance.md, on the shipped models."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.checkpoint import save_learner
from engine.learners import LEARNERS
from engine.nets import BackboneConfig
from tools.browser import chromium_path

pytestmark = pytest.mark.slow
SESSIONS = 8
LIMIT_S = 400  # bounded; 150 s was exceeded with the full suite sharing the 2 cores


def test_eight_sessions_at_once_all_get_their_results(tmp_path: Path) -> None:
    pytest.importorskip("playwright")
    if chromium_path() is None:
        pytest.skip("needs Chromium")
    from tools.load_test import run

    for name in sorted(LEARNERS):
        save_learner(tmp_path / "models" / name / "model", LEARNERS[name](backbone=BackboneConfig(channels=8)),
                     {"meta_step": 0, "val_accuracy": 0.2})
    report = run(SESSIONS, rounds=1, limit_s=LIMIT_S,
                 env={"META_PLAYGROUND_MODELS": str(tmp_path / "models"), "OMNIGLOT_DIR": str(tmp_path / "none")})
    stats = report["add_support_example"]
    # Each lost round says what its page showed (results column, class row, pad message, script state).
    assert report["lost_rounds"] == 0, f"a session never saw the results of its comparison: {report['lost_pages']}"
    assert stats["n"] == SESSIONS and stats["max_ms"] < LIMIT_S * 1000


def test_each_session_draws_in_a_hand_of_its_own() -> None:
    """No two sessions draw the same strokes (else they share one another's cached adaptations and the load
    test measures the cache, not the adaptations); the first draws the shapes as they are."""
    from tests.test_browser import SHAPES
    from tools.load_test import own_hand

    assert own_hand(SHAPES[0], 0) == SHAPES[0]
    hands = {repr(own_hand(shape, person)) for shape in SHAPES for person in range(SESSIONS)}
    assert len(hands) == len(SHAPES) * SESSIONS
    assert all(0.0 <= x <= 1.0 for person in range(SESSIONS) for shape in SHAPES
               for points in own_hand(shape, person) for x, _ in points)
