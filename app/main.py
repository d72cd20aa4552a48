"""The playground's Streamlit front end (minimal until the app issue lands): lists the registered
algorithms and the checkpoints in models/. All maths lives in ``engine``."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.checkpoint import CheckpointError, read_metadata  # noqa: E402
from engine.learners import LEARNERS  # noqa: E402
from engine.paths import REPO_ROOT  # noqa: E402

st.set_page_config(page_title="Few-shot meta-learning playground", layout="wide")
st.title("Few-shot meta-learning playground")
st.write("Draw a few characters, pick meta-learning algorithms and watch each adapt. "
         "The drawing and comparison interface is under construction; the engine is ready.")

rows = []
for name in sorted(LEARNERS):
    path = REPO_ROOT / "models" / name
    try:
        metadata = read_metadata(path)
        status = f"trained ({metadata.get('meta_step', '?')} meta-steps, validation accuracy {metadata.get('val_accuracy', float('nan')):.3f})"
    except CheckpointError:
        status = "no checkpoint yet"
    rows.append({"algorithm": name, "checkpoint": status})
st.table(rows)
