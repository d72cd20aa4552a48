"""Hostile and malformed task files for "Open task", each with the words its refusal must contain."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from app.persistence import MANIFEST, MAX_MANIFEST_BYTES, MAX_MEMBERS, TASK_FORMAT, TASK_VERSION


@dataclass(frozen=True)
class TaskCase:
    name: str
    data: bytes
    says: str


def png(size: tuple[int, int] = (28, 28), mode: str = "L", value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def manifest(**changes: Any) -> dict[str, Any]:
    """A valid 2-way 1-shot manifest with one example per class and one query (see :func:`members`)."""
    entry = {"image": "a.png", "network": "a.net.png", "source": "drawing", "name": "drawing"}
    base = {"format": TASK_FORMAT, "version": TASK_VERSION, "ways": 2, "shots": 1,
            "classes": [{"name": "A", "examples": [entry]}, {"name": "B", "examples": [entry]}],
            "queries": [{**entry, "label": 1}], "omniglot": None, "settings": {}}
    base.update(changes)
    return base


def members() -> dict[str, bytes]:
    return {"a.png": png((64, 64), value=255), "a.net.png": png()}


def zipped(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def task(manifest_value: Any = None, extra: dict[str, bytes] | None = None) -> bytes:
    text = json.dumps(manifest() if manifest_value is None else manifest_value).encode()
    return zipped({MANIFEST: text, **members(), **(extra or {})})


def zip_bomb() -> bytes:
    """200 MB of zeros in a 200 kB member: refused from its declared size, never inflated."""
    return zipped({MANIFEST: json.dumps(manifest()).encode(), "a.net.png": bytes(200 * 1024 * 1024), "a.png": b""})


def lying_bomb() -> bytes:
    """A member whose headers claim 100 bytes but which inflates to 8 MB: the read stops at the claim."""
    data = bytearray(zipped({MANIFEST: json.dumps(manifest()).encode(), "a.png": png((64, 64)),
                             "a.net.png": bytes(8 * 1024 * 1024)}))
    name = b"a.net.png"
    # The uncompressed-size field of the member's local header (offset 22) and central entry (24).
    for signature, size_offset, name_offset in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            length = struct.unpack_from("<H", data, start + (26 if signature == b"PK\x03\x04" else 28))[0]
            if bytes(data[start + name_offset:start + name_offset + length]) == name:
                struct.pack_into("<I", data, start + size_offset, 100)
            start += 4
    return bytes(data)


def deep_json() -> bytes:
    return zipped({MANIFEST: b"[" * 50_000 + b"]" * 50_000})


def with_entry(change: Callable[[dict[str, Any]], None]) -> bytes:
    value = manifest()
    change(value)
    return task(value)


def task_cases() -> list[TaskCase]:
    return [
        TaskCase("not-a-zip.zip", b"this is a text file", "not a readable zip"),
        TaskCase("empty.zip", b"", "not a readable zip"),
        TaskCase("truncated.zip", task()[:200], "not"),
        TaskCase("no-manifest.zip", zipped(members()), "no manifest.json"),
        TaskCase("bomb.zip", zip_bomb(), "too large"),
        TaskCase("lying-bomb.zip", lying_bomb(), "corrupt"),
        TaskCase("traversal.zip", task(extra={"../../etc/evil.png": b"x"}), "unsafe name"),
        TaskCase("absolute.zip", task(extra={"/etc/passwd": b"x"}), "unsafe name"),
        TaskCase("backslash.zip", task(extra={"..\\evil.png": b"x"}), "unsafe name"),
        TaskCase("too-many-files.zip", task(extra={f"f{i}.png": b"" for i in range(MAX_MEMBERS)}), "at most"),
        TaskCase("huge-manifest.zip", task(manifest(padding="x" * MAX_MANIFEST_BYTES)), "too large"),
        TaskCase("deep-manifest.zip", deep_json(), "not valid JSON"),
        TaskCase("not-json.zip", zipped({MANIFEST: b"{ways: 5"}), "not valid JSON"),
        TaskCase("list-manifest.zip", task([1, 2, 3]), "not a meta-playground-task manifest"),
        TaskCase("other-format.zip", task(manifest(format="something-else")), "not a meta-playground-task"),
        TaskCase("future-version.zip", task(manifest(version=99)), "version"),
        TaskCase("ways-text.zip", task(manifest(ways="5")), "N (ways)"),
        TaskCase("ways-bool.zip", task(manifest(ways=True)), "N (ways)"),
        TaskCase("ways-50.zip", task(manifest(ways=50)), "N (ways)"),
        TaskCase("shots-0.zip", task(manifest(shots=0)), "K (shots)"),
        TaskCase("classes-object.zip", task(manifest(classes={"a": 1})), "class list"),
        TaskCase("class-name-number.zip", with_entry(lambda m: m["classes"][0].update(name=5)), "name must be text"),
        TaskCase("example-string.zip", with_entry(lambda m: m["classes"][0].update(examples=["a.png"])),
                 "must be an object"),
        TaskCase("label-99.zip", with_entry(lambda m: m["queries"][0].update(label=99)), "class must be"),
        TaskCase("label-text.zip", with_entry(lambda m: m["queries"][0].update(label="1")), "class must be"),
        TaskCase("unknown-source.zip", with_entry(lambda m: m["queries"][0].update(source="camera")), "unknown source"),
        TaskCase("missing-member.zip", with_entry(lambda m: m["queries"][0].update(network="gone.png")),
                 "not in it"),
        TaskCase("member-traversal-ref.zip", with_entry(lambda m: m["queries"][0].update(network="../a.net.png")),
                 "not in it"),
        TaskCase("network-64px.zip", with_entry_extra("big.net.png", png((64, 64))), "28x28"),
        TaskCase("network-rgb.zip", with_entry_extra("rgb.net.png", png(mode="RGB")), "greyscale"),
        TaskCase("network-not-png.zip", with_entry_extra("bad.net.png", b"GIF89a not really"), "not a readable PNG"),
        TaskCase("omniglot-text.zip", task(manifest(omniglot={"seed": "x"})), "Omniglot"),
        TaskCase("settings-list.zip", task(manifest(settings=[1])), "settings"),
    ]


def with_entry_extra(member: str, data: bytes) -> bytes:
    """A valid task whose query's network input is ``member`` (holding ``data``)."""
    value = manifest()
    value["queries"][0]["network"] = member
    return task(value, extra={member: data})
