"""How many Omniglot drawings the app's own preprocessing cannot read: ``python -m tools.pipeline_fallbacks``.

The canonical pipeline decodes every dataset drawing with :func:`engine.data.preprocess.preprocess_image`,
the path a drawing or an upload takes in the app; a drawing it refuses (e.g. too little ink) falls back
to the plain resize (:func:`engine.data.omniglot.decode_drawing`), so that no character loses a drawing.
Those drawings reach the network through another pipeline than the app's. This counts them per split
and per reason and lists the first few; ``--json FILE`` saves the report.

    python -m tools.pipeline_fallbacks [--splits background,evaluation] [--data-dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tqdm import tqdm  # noqa: E402

from engine.data.omniglot import SPLITS, iter_drawings  # noqa: E402
from engine.data.preprocess import ImagePreprocessError, preprocess_image  # noqa: E402

LISTED = 20
"""Fallback drawings named in the report, per split."""


def count_fallbacks(data_dir: Path | str | None, split: str, progress: bool = False) -> dict[str, Any]:
    """{drawings, fallbacks, by_reason: {error class: count}, examples: [alphabet/character #n: message]}."""
    reasons: Counter[str] = Counter()
    examples: list[str] = []
    drawings = 0
    per_character: Counter[str] = Counter()  # drawings seen so far of each character: the one at hand's number
    for alphabet, character, png in tqdm(iter_drawings(data_dir, split), desc=split, unit="drawing",
                                         disable=None if progress else True):
        drawings += 1
        name = f"{alphabet}/{character}"
        per_character[name] += 1
        try:
            preprocess_image(png)
        except ImagePreprocessError as error:
            reasons[type(error).__name__] += 1
            if len(examples) < LISTED:
                examples.append(f"{name} drawing {per_character[name]}: {error}")
    return {"split": split, "drawings": drawings, "fallbacks": sum(reasons.values()),
            "by_reason": dict(reasons.most_common()), "examples": examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits")
    parser.add_argument("--data-dir", default=None, help="Omniglot folder (default: $OMNIGLOT_DIR or ../shared)")
    parser.add_argument("--json", type=Path, default=None, help="save the report here")
    args = parser.parse_args()
    reports = [count_fallbacks(args.data_dir, split.strip(), progress=True) for split in args.splits.split(",")]
    for report in reports:
        share = 100.0 * report["fallbacks"] / max(1, report["drawings"])
        print(f"{report['split']}: {report['fallbacks']} of {report['drawings']} drawings ({share:.3f}%) fall back "
              f"to the plain resize; by reason: {report['by_reason'] or 'none'}")
        for example in report["examples"]:
            print(f"  {example}")
    if args.json is not None:
        args.json.write_text(json.dumps(reports, indent=1) + "\n")


if __name__ == "__main__":
    main()
