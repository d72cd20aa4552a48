"""Omniglot loading: zip or folder -> decoded 28x28 uint8 arrays, cached on disk.

By default every drawing goes through :func:`engine.data.preprocess.preprocess_image`, the function
the app runs on every drawing and upload (the ``canonical`` pipeline), so training, evaluation and the
app give the network one distribution. Decoding all 32k PNGs takes a few minutes, so the result is
cached as ``.npz`` in :func:`engine.paths.cache_dir`, keyed by pipeline and the source's identity.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import tempfile
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from engine.data.frames import IMAGE_SIZE, from_uint8, omniglot_to_28, to_uint8
from engine.data.preprocess import ImagePreprocessError, preprocess_image
from engine.paths import cache_dir, resolve_data_dir

Split = Literal["background", "evaluation"]
SPLITS: tuple[Split, ...] = get_args(Split)

DRAWINGS_PER_CHARACTER = 20
"""Omniglot has exactly 20 drawings (by 20 people) of every character."""
CACHE_FORMAT_VERSION = 2
"""Bump when decoding or resizing changes, so stale caches are ignored."""

Pipeline = Literal["canonical", "raw"]
PIPELINES: tuple[Pipeline, ...] = get_args(Pipeline)
"""How a 105x105 drawing becomes the 28x28 the network sees. ``canonical``: through
:func:`engine.data.preprocess.preprocess_image`, the function every drawing and upload of the app goes
through (ink found, thinned and re-drawn with Omniglot's pen at Omniglot's median size and position),
so training, evaluation and the app see one distribution. ``raw``: the drawing itself resized, as the
checkpoints trained before the canonical pipeline existed saw it (kept to reproduce them)."""
DEFAULT_PIPELINE: Pipeline = "canonical"
LEGACY_PIPELINE: Pipeline = "raw"
"""The pipeline of runs and evaluations whose metadata predates the ``pipeline`` setting."""

VALIDATION_ALPHABETS: tuple[str, ...] = (
    "Bengali",  # Brahmic abugida, curly strokes
    "Futurama",  # invented script, simple geometric shapes
    "Greek",  # European alphabet
    "Korean",  # East-Asian block-like strokes
    "Malay_(Jawi_-_Arabic)",  # Arabic-derived, dots and curves
)
"""Background alphabets held out for validation / model selection (never trained on)."""

SplitScheme = Literal["alphabets", "characters", "background"]
SPLIT_SCHEMES: tuple[SplitScheme, ...] = get_args(SplitScheme)
"""How characters are divided between meta-training, validation and test (:func:`load_splits`)."""

SCHEMES_TESTING_ON_EVALUATION: frozenset[str] = frozenset({"alphabets", "background"})
"""Schemes whose test characters are exactly the dataset's evaluation split (unseen alphabets), so a
test needs only that split loaded; the others draw test characters from both splits."""
SCHEMES_TRAINING_ON_VALIDATION: frozenset[str] = frozenset({"background"})
"""Split schemes whose training also covers the validation alphabets: their validation accuracy is fit, not
selection (engine.train then keeps the latest checkpoint)."""

CHARACTER_SPLIT_SIZES = (1028, 172, 423)
"""Train / validation / test characters of the ``characters`` scheme: Vinyals et al.'s sizes (2016),
also ProtoNet's; MAML's and Reptile's code trains on the first two together (1200) and tests on 423."""
CHARACTER_SPLIT_SEED = 0

VALIDATION_SOURCES: dict[str, str] = {
    "alphabets": "the held-out background alphabets",
    "characters": f"the character split's {CHARACTER_SPLIT_SIZES[1]} validation characters",
    "background": "the validation alphabets, trained on too under this scheme (a fit curve, not model selection)",
}
"""Where each scheme's validation (model selection) tasks come from, in words."""

DOWNLOAD_HINT = "python -m engine.data download --dest DIR"


class DatasetNotFoundError(FileNotFoundError):
    """Neither ``images_<split>.zip`` nor an extracted ``images_<split>/`` folder exists."""


@dataclass(frozen=True, eq=False)
class CharacterSet:
    """A set of Omniglot characters with all their drawings.

    ``images`` is uint8 ``[C, 20, 28, 28]`` with ink high (255 = full ink, 0 = background);
    ``characters[i]`` is ``"Alphabet/characterNN"`` and ``alphabets[i]`` its alphabet.
    """

    images: np.ndarray
    characters: tuple[str, ...]
    alphabets: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 [C, D, H, W], got {self.images.dtype} {self.images.shape}")
        if not (len(self.characters) == len(self.alphabets) == self.images.shape[0]):
            raise ValueError("images, characters and alphabets must have the same length")

    @property
    def num_classes(self) -> int:
        """Number of characters (classes before any rotation augmentation)."""
        return int(self.images.shape[0])

    @property
    def drawings_per_class(self) -> int:
        """Drawings available per character (20 for Omniglot)."""
        return int(self.images.shape[1])

    @property
    def alphabet_names(self) -> tuple[str, ...]:
        """Distinct alphabets, sorted."""
        return tuple(sorted(set(self.alphabets)))

    def __len__(self) -> int:
        return self.num_classes

    def subset(self, mask_or_indices: np.ndarray | Sequence[int] | Sequence[bool]) -> CharacterSet:
        """Characters selected by a boolean mask (length C) or integer indices."""
        sel = np.asarray(mask_or_indices)
        if sel.dtype == bool:
            if sel.shape != (self.num_classes,):
                raise ValueError(f"mask must have shape ({self.num_classes},), got {sel.shape}")
            idx = np.flatnonzero(sel)
        else:
            idx = sel.astype(np.int64, copy=False).reshape(-1)
        images = self.images[idx]
        images.setflags(write=False)
        return CharacterSet(
            images=images,
            characters=tuple(self.characters[i] for i in idx),
            alphabets=tuple(self.alphabets[i] for i in idx),
        )


@dataclass(frozen=True, eq=False)
class Splits:
    """Meta-train / meta-validation / meta-test character sets (disjoint characters; disjoint
    alphabets too under the default ``alphabets`` scheme)."""

    train: CharacterSet
    val: CharacterSet
    test: CharacterSet
    # False when training sees the validation characters too: their accuracy then shows fit only and
    # cannot pick a checkpoint (engine.train keeps the latest instead).
    val_held_out: bool = True


# --------------------------------------------------------------------------- image ops


def to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 images ``[..., 28, 28]`` -> float32 tensor ``[..., 1, 28, 28]`` in [0, 1]."""
    arr = np.asarray(images_uint8)
    if arr.ndim < 2:
        raise ValueError(f"expected images [..., H, W], got shape {arr.shape}")
    return torch.from_numpy(np.expand_dims(from_uint8(arr), axis=-3))


def check_pipeline(pipeline: str) -> Pipeline:
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
    return pipeline  # type: ignore[return-value]


def decode_drawing(png_bytes: bytes, pipeline: Pipeline = DEFAULT_PIPELINE) -> np.ndarray:
    """One Omniglot PNG (white background, black ink) -> uint8 ink-high 28x28.

    ``canonical`` gives exactly the values the app computes for the same PNG uploaded by a user
    (:func:`preprocess_image` quantises to uint8 levels too). A drawing the user pipeline cannot read
    falls back to the plain resize rather than losing a character (``python -m tools.pipeline_fallbacks``
    counts them: docs/data.md).
    """
    if check_pipeline(pipeline) == "canonical":
        try:
            return to_uint8(preprocess_image(png_bytes))
        except ImagePreprocessError:
            pass
    with Image.open(io.BytesIO(png_bytes)) as im:
        grey = np.asarray(im.convert("L"), dtype=np.float32) / np.float32(255.0)
    return to_uint8(omniglot_to_28(1.0 - grey))


# --------------------------------------------------------------------------- sources


def _split_name(split: str) -> Split:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split  # type: ignore[return-value]


def find_source(data_dir: Path | str | None, split: Split) -> Path:
    """``<dir>/images_<split>.zip`` if present, else the extracted ``<dir>/images_<split>/``."""
    root = resolve_data_dir(data_dir)
    zip_path = root / f"images_{split}.zip"
    if zip_path.is_file():
        return zip_path
    folder = root / f"images_{split}"
    if folder.is_dir():
        return folder
    raise DatasetNotFoundError(
        f"Omniglot {split} split not found: neither {zip_path} nor {folder}/ exists. "
        f"Download it with `{DOWNLOAD_HINT}` (then pass --data-dir DIR or set OMNIGLOT_DIR=DIR)."
    )


def _drawing_key(relpath: str) -> tuple[str, str, str] | None:
    """``.../<Alphabet>/<character>/<file>.png`` -> (alphabet, character, file); None to skip."""
    parts = PurePosixPath(relpath.replace("\\", "/")).parts
    if len(parts) < 3 or not parts[-1].lower().endswith(".png"):
        return None
    if any(p.startswith((".", "__MACOSX")) for p in parts):
        return None
    return parts[-3], parts[-2], parts[-1]


def _group_drawings(keys: Iterable[tuple[tuple[str, str, str], str]]) -> dict[tuple[str, str], list[str]]:
    """Group entry names by (alphabet, character), each group sorted by file name."""
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for (alphabet, character, fname), entry in keys:
        groups.setdefault((alphabet, character), []).append((fname, entry))
    out: dict[tuple[str, str], list[str]] = {}
    for key in sorted(groups):
        files = sorted(groups[key])
        if len(files) != DRAWINGS_PER_CHARACTER:
            raise ValueError(
                f"{key[0]}/{key[1]} has {len(files)} drawings, expected {DRAWINGS_PER_CHARACTER}"
            )
        out[key] = [entry for _, entry in files]
    return out


def _source_fingerprint(source: Path) -> dict[str, object]:
    """Cheap identity of a zip (size, mtime) or folder (count, total size, newest mtime)."""
    if source.is_file():
        st = source.stat()
        return {"kind": "zip", "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    count, total, newest = 0, 0, 0
    for path in source.rglob("*.png"):
        st = path.stat()
        count, total, newest = count + 1, total + st.st_size, max(newest, st.st_mtime_ns)
    return {"kind": "folder", "files": count, "size": total, "mtime_ns": newest}


def cache_path_for(source: Path, split: Split, pipeline: Pipeline = DEFAULT_PIPELINE) -> Path:
    """Cache file name: split + pipeline + format version + hash of the source's identity."""
    ident = {
        "version": CACHE_FORMAT_VERSION,
        "split": split,
        "pipeline": pipeline,
        "path": str(source.resolve()),
        **_source_fingerprint(source),
    }
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"omniglot-{split}-{pipeline}-v{CACHE_FORMAT_VERSION}-{digest}.npz"


# --------------------------------------------------------------------------- decoding


def _decode_zip(source: Path, split: Split, pipeline: Pipeline, progress: bool) -> CharacterSet:
    with zipfile.ZipFile(source) as zf:
        return _decode_groups(_zip_groups(zf), zf.read, split, pipeline, progress)


def _zip_groups(zf: zipfile.ZipFile) -> dict[tuple[str, str], list[str]]:
    keyed = []
    for name in zf.namelist():
        key = _drawing_key(name)
        if key is not None:
            keyed.append((key, name))
    return _group_drawings(keyed)


def iter_drawings(data_dir: Path | str | None, split: Split) -> Iterator[tuple[str, str, bytes]]:
    """Every drawing of a split as (alphabet, character, PNG bytes), in the order :func:`load_split`
    stores them (characters sorted by name, each character's drawings by file name)."""
    source = find_source(data_dir, _split_name(split))
    if source.is_file():
        with zipfile.ZipFile(source) as zf:
            for (alphabet, character), entries in _zip_groups(zf).items():
                for entry in entries:
                    yield alphabet, character, zf.read(entry)
        return
    for (alphabet, character), paths in _folder_groups(source).items():
        for path in paths:
            yield alphabet, character, Path(path).read_bytes()


def _decode_folder(source: Path, split: Split, pipeline: Pipeline, progress: bool) -> CharacterSet:
    return _decode_groups(_folder_groups(source), lambda p: Path(p).read_bytes(), split, pipeline, progress)


def _folder_groups(source: Path) -> dict[tuple[str, str], list[str]]:
    keyed = []
    for path in source.rglob("*.png"):
        key = _drawing_key(path.relative_to(source).as_posix())
        if key is not None:
            keyed.append((key, str(path)))
    return _group_drawings(keyed)


PARALLEL_DECODE_MIN_CHARACTERS = 64
"""Decode in worker processes from this many characters on (the canonical pipeline costs ~9 ms a
drawing: 5 minutes a core for all of Omniglot, once, then cached)."""


def _decode_character(pngs: list[bytes], pipeline: Pipeline) -> np.ndarray:
    return np.stack([decode_drawing(png, pipeline) for png in pngs])


def _decode_groups(
    groups: dict[tuple[str, str], list[str]], read: Callable[[str], bytes], split: Split, pipeline: Pipeline,
    progress: bool,
) -> CharacterSet:
    if not groups:
        raise ValueError(f"no drawings found for split {split!r}")
    images = np.empty((len(groups), DRAWINGS_PER_CHARACTER, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    pngs = ([read(entry) for entry in entries] for entries in groups.values())
    workers = os.cpu_count() or 1
    bar = tqdm(total=len(groups), desc=f"decoding Omniglot {split} ({pipeline})", unit="char",
               disable=None if progress else True)
    if workers > 1 and len(groups) >= PARALLEL_DECODE_MIN_CHARACTERS:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for c, decoded in enumerate(pool.map(_decode_character, pngs, itertools.repeat(pipeline),
                                                 chunksize=8)):
                images[c] = decoded
                bar.update(1)
    else:
        for c, character_pngs in enumerate(pngs):
            images[c] = _decode_character(character_pngs, pipeline)
            bar.update(1)
    bar.close()
    return CharacterSet(
        images=images,
        characters=tuple(f"{a}/{ch}" for a, ch in groups),
        alphabets=tuple(a for a, _ in groups),
    )


def _save_cache(path: Path, chars: CharacterSet) -> None:
    """Write atomically; a failed write (read-only home, full disk) only costs speed."""
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp.npz", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, images=chars.images, characters=np.array(chars.characters),
                     alphabets=np.array(chars.alphabets))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is not secret
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not write Omniglot cache {path}: {exc}", stacklevel=3)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _load_cache(path: Path) -> CharacterSet | None:
    """The cached set, or None if missing or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            images = npz["images"]
            characters = tuple(str(s) for s in npz["characters"])
            alphabets = tuple(str(s) for s in npz["alphabets"])
        images.setflags(write=False)
        return CharacterSet(images=images, characters=characters, alphabets=alphabets)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def load_split(data_dir: Path | str | None, split: Split, *, progress: bool = True,
               pipeline: Pipeline | str = DEFAULT_PIPELINE) -> CharacterSet:
    """Load one official split as ink-high uint8 ``[C, 20, 28, 28]``, sorted by name.

    Reads ``images_<split>.zip`` (preferred) or the extracted folder; the data dir may be
    read-only since the decoded array is cached under :func:`engine.paths.cache_dir`.
    ``pipeline`` (:data:`PIPELINES`) says how each drawing becomes a 28x28.
    """
    split = _split_name(split)
    pipeline = check_pipeline(pipeline)
    source = find_source(data_dir, split)
    cpath = cache_path_for(source, split, pipeline)
    cached = _load_cache(cpath)
    if cached is not None:
        return cached
    decode = _decode_zip if source.is_file() else _decode_folder
    chars = decode(source, split, pipeline, progress)
    chars.images.setflags(write=False)
    _save_cache(cpath, chars)
    return chars


def character_splits(background: CharacterSet, evaluation: CharacterSet, seed: int = CHARACTER_SPLIT_SEED) -> Splits:
    """The papers' split: all characters of both official splits shuffled together, whatever their
    alphabet, then cut into :data:`CHARACTER_SPLIT_SIZES` (test characters' alphabets are seen in
    training). The original papers' exact character lists are not part of the dataset; ``seed`` fixes ours."""
    images = np.concatenate([background.images, evaluation.images])
    everything = CharacterSet(images=images, characters=background.characters + evaluation.characters,
                              alphabets=background.alphabets + evaluation.alphabets)
    if everything.num_classes != sum(CHARACTER_SPLIT_SIZES):
        raise ValueError(f"the character split needs {sum(CHARACTER_SPLIT_SIZES)} characters, "
                         f"found {everything.num_classes}")
    order = np.random.default_rng(seed).permutation(everything.num_classes)
    train_end, val_end = CHARACTER_SPLIT_SIZES[0], CHARACTER_SPLIT_SIZES[0] + CHARACTER_SPLIT_SIZES[1]
    return Splits(train=everything.subset(np.sort(order[:train_end])),
                  val=everything.subset(np.sort(order[train_end:val_end])),
                  test=everything.subset(np.sort(order[val_end:])))


def load_splits(data_dir: Path | str | None = None, *, progress: bool = True,
                scheme: SplitScheme | str = "alphabets", pipeline: Pipeline | str = DEFAULT_PIPELINE) -> Splits:
    """``alphabets`` (ours, the default): train = background minus :data:`VALIDATION_ALPHABETS`,
    val = those, test = evaluation, so test alphabets are unseen. ``background``: the same, but training
    also covers the validation alphabets (all 964 background characters), as a final model is trained once
    its schedule is chosen (Snell et al. trained on train + validation). ``characters``: the papers' split
    (:func:`character_splits`). ``pipeline``: see :data:`PIPELINES`."""
    if scheme not in SPLIT_SCHEMES:
        raise ValueError(f"split scheme must be one of {SPLIT_SCHEMES}, got {scheme!r}")
    background = load_split(data_dir, "background", progress=progress, pipeline=pipeline)
    if scheme not in SCHEMES_TESTING_ON_EVALUATION:
        return character_splits(background, load_split(data_dir, "evaluation", progress=progress, pipeline=pipeline))
    is_val = np.array([a in VALIDATION_ALPHABETS for a in background.alphabets], dtype=bool)
    if is_val.all() or not is_val.any():
        raise ValueError(
            "background split must contain some but not all of the validation alphabets "
            f"{VALIDATION_ALPHABETS}; found alphabets {background.alphabet_names}"
        )
    trains_on_val = scheme in SCHEMES_TRAINING_ON_VALIDATION
    return Splits(
        train=background if trains_on_val else background.subset(~is_val),
        val=background.subset(is_val),
        test=load_split(data_dir, "evaluation", progress=progress, pipeline=pipeline),
        val_held_out=not trains_on_val,
    )
