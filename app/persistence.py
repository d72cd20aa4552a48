"""Task files and the reload store: a task as a zip of PNGs plus a JSON manifest.

Pure Python, no Streamlit. "Save task" writes :func:`write_task`'s bytes, "Open task" reads them
with :func:`read_task`, and every page run keeps the session's task in a small on-disk store
(:class:`app.task_store.TaskStore`, under the cache folder) keyed by the random token in the page's
address (``?task=...``), so a reload or an accidental F5 brings the task back.

Layout of a task file::

    manifest.json                       format, version, N, K, class names, labels, settings
    class-03/slot-02.png                what the user gave (a small display copy)
    class-03/slot-02.net.png            the 28x28 network input, exactly (greyscale, ink bright)
    query-007.png, query-007.net.png

A file is untrusted input: :func:`read_task` bounds its size, the number, names and sizes of its
members (a zip bomb stops at the bound, it is never inflated whole), and checks every manifest
field's type and range. It raises :class:`TaskFileError` (a user-facing message) and nothing else,
and it builds the whole task before anything is changed, so a bad file changes nothing.
"""

from __future__ import annotations

import io
import json
import re
import struct
import time
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
from PIL import Image

from app.images import Example, Source, example_from_bytes, inverted_png, network_png, original_png
from app.workspace import MAX_QUERIES, MAX_SHOTS, MAX_WAYS, MIN_SHOTS, MIN_WAYS, TASK, Query, SupportClass, \
    Workspace, default_class_name
from engine.checkpoint import atomic_write_bytes
from engine.data.frames import from_uint8
from engine.data.preprocess import ImagePreprocessError

TASK_FORMAT = "meta-playground-task"
TASK_VERSION = 1
MANIFEST = "manifest.json"
MAX_TASK_FILE_BYTES = 32 * 1024 * 1024
"""A full 20-way 10-shot task with 60 queries is about 1 MB; anything far larger is refused unread."""
MAX_MANIFEST_BYTES = 256 * 1024
MAX_IMAGE_BYTES = 4 * 1024 * 1024
"""One member image (the display copies the app writes are a few kB)."""
MAX_MEMBERS = 1 + 2 * (MAX_WAYS * MAX_SHOTS + MAX_QUERIES)
MAX_TOTAL_BYTES = 64 * 1024 * 1024
"""Sum of the members' declared (uncompressed) sizes; each read also stops at its own bound."""
MAX_ORIGINAL_SIDE = 2048
MAX_NAME_CHARS = 200
NETWORK_SIDE = 28
MAX_CLASS_NAME = 60
SAFE_MEMBER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,80}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,80}){0,2}$")
"""Member names the app writes and reads: relative, no ``..``, no backslashes, no drive letters."""
SOURCES: tuple[str, ...] = get_args(Source)
OMNIGLOT_FIELDS = ("seed", "ways", "shots", "queries_per_class")
# Errors that decoding untrusted zip, JSON and PNG data raises for bad data (anything else is a bug).
_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, zipfile.BadZipFile, zipfile.LargeZipFile,
                  NotImplementedError, RuntimeError, zlib.error, struct.error, IndexError, KeyError,
                  RecursionError, Image.DecompressionBombError, UnicodeDecodeError, OverflowError, TypeError)


class TaskFileError(ValueError):
    """A task file cannot be opened; the message says why (user-facing)."""


@dataclass
class LoadedTask:
    """A task read from a file, complete and checked, not yet applied to any workspace."""

    ways: int
    shots: int
    classes: list[SupportClass]
    queries: list[Query]
    omniglot: dict[str, int] | None
    settings: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- writing


def _member_names(where: str) -> tuple[str, str]:
    return f"{where}.png", f"{where}.net.png"


def _entry(archive: zipfile.ZipFile, where: str, example: Example) -> dict[str, Any]:
    image, network = _member_names(where)
    # PNGs are already compressed: stored as they are, which also makes writing fast.
    archive.writestr(image, example.original_png, compress_type=zipfile.ZIP_STORED)
    archive.writestr(network, example.network_png, compress_type=zipfile.ZIP_STORED)
    return {"image": image, "network": network, "source": example.source, "name": example.name[:MAX_NAME_CHARS]}


def write_task(ws: Workspace, settings: dict[str, Any] | None = None) -> bytes:
    """The whole workspace (hidden classes and slots beyond K included) as task-file bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        classes = []
        for index, support_class in enumerate(ws.classes):
            slots = [None if example is None else _entry(archive, f"class-{index:02d}/slot-{slot:02d}", example)
                     for slot, example in enumerate(support_class.slots)]
            classes.append({"name": support_class.name, "examples": slots})
        queries = [{**_entry(archive, f"query-{number:03d}", query.example), "label": query.label}
                   for number, query in enumerate(ws.queries)]
        manifest = {"format": TASK_FORMAT, "version": TASK_VERSION, "ways": ws.ways, "shots": ws.shots,
                    "classes": classes, "queries": queries, "omniglot": ws.omniglot, "settings": settings or {},
                    "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
    return buffer.getvalue()


# --------------------------------------------------------------------------- reading


def _integer(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TaskFileError(f"its {what} must be a whole number from {low} to {high}.")
    return value


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise TaskFileError(f"its {what} must be text.")
    return value[:limit]


def _list(value: Any, what: str, limit: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise TaskFileError(f"its {what} must be a list of at most {limit} entries.")
    return value


class _Archive:
    """Bounded reads from an untrusted zip."""

    def __init__(self, data: bytes) -> None:
        if len(data) > MAX_TASK_FILE_BYTES:
            raise TaskFileError(f"it is larger than {MAX_TASK_FILE_BYTES // (1024 * 1024)} MB.")
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self.zip.infolist()
        except _DECODE_ERRORS:
            raise TaskFileError("it is not a task file (not a readable zip archive).") from None
        if len(infos) > MAX_MEMBERS:
            raise TaskFileError(f"it holds {len(infos)} files; a task has at most {MAX_MEMBERS}.")
        names = [info.filename for info in infos]
        unsafe = [name for name in names if not SAFE_MEMBER.match(name) or ".." in name]
        if unsafe:
            raise TaskFileError(f"it holds a file with an unsafe name ({unsafe[0][:60]!r}).")
        if len(set(names)) != len(names):
            raise TaskFileError("it holds two files with the same name.")
        if sum(info.file_size for info in infos) > MAX_TOTAL_BYTES:
            raise TaskFileError("its contents are too large once unpacked.")
        self.infos = {info.filename: info for info in infos}

    def read(self, name: Any, limit: int) -> bytes:
        if not isinstance(name, str) or name not in self.infos:
            raise TaskFileError(f"its manifest names a file that is not in it ({str(name)[:60]!r}).")
        info = self.infos[name]
        if info.file_size > limit:
            raise TaskFileError(f"{name} is too large.")
        try:
            with self.zip.open(info) as member:
                content = member.read(limit + 1)  # never inflates more than the bound, whatever the header says
        except _DECODE_ERRORS:
            raise TaskFileError(f"{name} is corrupt.") from None
        if len(content) > limit:
            raise TaskFileError(f"{name} is too large.")
        return content


def _decode_png(data: bytes, name: str, max_side: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        if image.format != "PNG":
            raise TaskFileError(f"{name} is not a PNG image.")
        width, height = image.size
        if not (0 < width <= max_side and 0 < height <= max_side):
            raise TaskFileError(f"{name} is {width}x{height} pixels (at most {max_side}x{max_side}).")
        image.load()
        return image
    except TaskFileError:
        raise
    except _DECODE_ERRORS:
        raise TaskFileError(f"{name} is not a readable PNG image.") from None


def _network_pixels(data: bytes, name: str) -> np.ndarray:
    image = _decode_png(data, name, NETWORK_SIDE)
    if image.size != (NETWORK_SIDE, NETWORK_SIDE) or image.mode != "L":
        raise TaskFileError(f"{name} must be a {NETWORK_SIDE}x{NETWORK_SIDE} greyscale PNG.")
    pixels = from_uint8(np.asarray(image, dtype=np.uint8)).copy()
    pixels.setflags(write=False)
    return pixels


def _example(archive: _Archive, entry: Any, where: str) -> Example:
    if not isinstance(entry, dict):
        raise TaskFileError(f"its {where} must be an object.")
    source = entry.get("source", "upload")
    if source not in SOURCES:
        raise TaskFileError(f"its {where} has an unknown source ({str(source)[:30]!r}).")
    name = _text(entry.get("name", ""), f"{where}'s name", MAX_NAME_CHARS)
    image_name, network_name = entry.get("image"), entry.get("network")
    if network_name is None:
        # A hand-made file may give only images: they are preprocessed like uploads.
        data = archive.read(image_name, MAX_IMAGE_BYTES)
        _decode_png(data, str(image_name), MAX_ORIGINAL_SIDE)
        try:
            return example_from_bytes(data, source, name)
        except ImagePreprocessError as error:
            raise TaskFileError(f"{image_name}: {error}") from None
    pixels = _network_pixels(archive.read(network_name, MAX_IMAGE_BYTES), str(network_name))
    if image_name is None:
        shown = inverted_png(pixels)
    else:
        data = archive.read(image_name, MAX_IMAGE_BYTES)
        _decode_png(data, str(image_name), MAX_ORIGINAL_SIDE)
        try:
            shown = original_png(data)  # re-encoded: only pixels the app made itself reach the page
        except _DECODE_ERRORS:
            raise TaskFileError(f"{image_name} is not a readable PNG image.") from None
    return Example(id=uuid.uuid4().hex, source=source, name=name, pixels=pixels, original_png=shown,
                   network_png=network_png(pixels))


def _manifest(archive: _Archive) -> dict[str, Any]:
    if MANIFEST not in archive.infos:
        raise TaskFileError(f"it has no {MANIFEST} (is it a task saved by this app?).")
    raw = archive.read(MANIFEST, MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except _DECODE_ERRORS:
        raise TaskFileError(f"its {MANIFEST} is not valid JSON.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != TASK_FORMAT:
        raise TaskFileError(f"its {MANIFEST} is not a {TASK_FORMAT} manifest.")
    version = manifest.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= TASK_VERSION:
        raise TaskFileError(f"it has format version {str(version)[:20]}; this app reads version {TASK_VERSION}.")
    return manifest


def read_task(data: bytes) -> LoadedTask:
    """Parse and check task-file bytes completely; raises :class:`TaskFileError` only."""
    archive = _Archive(data)
    manifest = _manifest(archive)
    ways = _integer(manifest.get("ways"), "N (ways)", MIN_WAYS, MAX_WAYS)
    shots = _integer(manifest.get("shots"), "K (shots)", MIN_SHOTS, MAX_SHOTS)
    classes = [SupportClass(default_class_name(index)) for index in range(MAX_WAYS)]
    for index, entry in enumerate(_list(manifest.get("classes", []), "class list", MAX_WAYS)):
        if not isinstance(entry, dict):
            raise TaskFileError(f"its class {index + 1} must be an object.")
        classes[index].name = _text(entry.get("name", ""), f"class {index + 1}'s name", MAX_CLASS_NAME).strip()
        for slot, example in enumerate(_list(entry.get("examples", []), f"class {index + 1}'s examples",
                                             MAX_SHOTS)):
            if example is not None:
                classes[index].slots[slot] = _example(archive, example, f"class {index + 1} example {slot + 1}")
    queries = []
    for number, entry in enumerate(_list(manifest.get("queries", []), "query list", MAX_QUERIES)):
        example = _example(archive, entry, f"query {number + 1}")
        label = entry.get("label")
        queries.append(Query(example, None if label is None else
                             _integer(label, f"query {number + 1}'s class", 0, MAX_WAYS - 1)))
    omniglot = manifest.get("omniglot")
    if omniglot is not None:
        if not isinstance(omniglot, dict):
            raise TaskFileError("its Omniglot sampling record must be an object.")
        omniglot = {name: _integer(omniglot.get(name), f"Omniglot {name}", 0, 2**31 - 1) for name in OMNIGLOT_FIELDS}
    settings = manifest.get("settings", {})
    if not isinstance(settings, dict):
        raise TaskFileError("its settings must be an object.")
    return LoadedTask(ways, shots, classes, queries, omniglot, settings)


def apply_task(ws: Workspace, task: LoadedTask) -> None:
    """Make ``task`` the workspace's task (the one it replaces stays one "Restore" away)."""
    ws.replace_task(task.classes, task.queries, task.omniglot, task.ways, task.shots)


def open_task_file(ws: Workspace, name: str, data: bytes) -> bool:
    """"Open task": replace the task with the file's, or leave it unchanged and say why (message
    target :data:`~app.workspace.TASK`); True when it was opened."""
    name = name[:80]
    ws.clear_messages(TASK)
    try:
        task = read_task(data)
    except TaskFileError as error:
        ws.say(TASK, "error", f"“{name}” was not opened: {error} Your task is unchanged.")
        return False
    apply_task(ws, task)
    count = sum(e is not None for c in task.classes for e in c.slots)
    ws.say(TASK, "success", f"Opened “{name}”: {task.ways}-way {task.shots}-shot, {count} examples, "
                            f"{len(task.queries)} queries. “Restore previous task” brings back the one it "
                            "replaced.")
    return True
