"""Command line: ``python -m engine.data {download,info}``.

``download`` fetches and verifies the official Omniglot zips; ``info`` prints what
the loader sees (a quick check that a data folder is usable).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from engine.paths import REPO_ROOT, resolve_data_dir


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    dl = sub.add_parser("download", help="download and verify the official Omniglot release")
    dl.add_argument("--dest", default=str(REPO_ROOT / "data" / "omniglot"),
                    help="destination folder (default: %(default)s)")
    dl.add_argument("--base-url", default=None, help="mirror serving images_background.zip and "
                    "images_evaluation.zip (default: the official GitHub release)")
    dl.add_argument("--retries", type=int, default=3, help="attempts per file (default: %(default)s)")
    dl.add_argument("--no-progress", action="store_true", help="no progress bars")

    info = sub.add_parser("info", help="print characters / drawings / alphabets per split")
    info.add_argument("--data-dir", default=None, help="Omniglot folder (default: $OMNIGLOT_DIR or known places)")
    return parser


def _cmd_download(args: argparse.Namespace) -> int:
    from engine.data.download import OFFICIAL_BASE_URL, DownloadError, download_omniglot

    try:
        paths = download_omniglot(args.dest, base_url=args.base_url or OFFICIAL_BASE_URL,
                                  progress=not args.no_progress, retries=args.retries)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("Nothing was left half-written; re-run the command to retry.", file=sys.stderr)
        return 1
    for path in paths:
        print(f"ok  {path}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from engine.data.omniglot import SPLITS, DatasetNotFoundError, find_source, load_split, load_splits

    data_dir = resolve_data_dir(args.data_dir)
    print(f"data dir: {data_dir}")
    try:
        for split in SPLITS:
            chars = load_split(data_dir, split)
            print(f"{split}: {chars.num_classes} characters, {chars.images.shape[0] * chars.images.shape[1]} "
                  f"drawings, {len(chars.alphabet_names)} alphabets  [{find_source(data_dir, split)}]")
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        splits = load_splits(data_dir)
    except ValueError as exc:
        print(f"meta splits: unavailable ({exc})")
        return 0
    parts = [f"{name} {cs.num_classes} characters / {len(cs.alphabet_names)} alphabets"
             for name, cs in (("train", splits.train), ("val", splits.val), ("test", splits.test))]
    print("meta splits: " + ", ".join(parts))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _build_parser().parse_args(argv)
    if args.command == "download":
        return _cmd_download(args)
    return _cmd_info(args)


if __name__ == "__main__":
    sys.exit(main())
