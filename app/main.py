"""Entry point: ``streamlit run app/main.py`` (from the repository root).

The page itself lives in :mod:`app.ui`; all maths lives in :mod:`engine`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.ui import main  # noqa: E402

main()
