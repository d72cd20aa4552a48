"""Reload survival: each page's task kept on disk under the random token in its address.

Every page run that changed the task (or the settings that travel with it) writes the session's
task file (:func:`app.persistence.write_task`) to ``<cache>/tasks/<token>.zip`` atomically; the
page's first run after a reload reads it back. The token (``?task=...``, 128 random bits) is the
only key, so sessions see only their own task unless a user shares the address. The store is
bounded in file count, bytes and age (least recently used files go first).
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.persistence import MAX_TASK_FILE_BYTES
from app.workspace import MAX_WAYS, Workspace
from engine.checkpoint import atomic_write_bytes


def valid_setting(key: str, value: Any) -> bool:
    """Whether a saved widget value (app.state.PERSISTED_SETTINGS) has the type and range its widget takes."""
    from app.sidebar import MAX_INNER_LR, MAX_INNER_STEPS, MIN_INNER_LR
    from app.state import (ALGORITHMS, AUTO_RUN, FINETUNE, LAYOUT, LAYOUTS, LR, MAX_QUERIES_PER_CLASS, MAX_SEED,
                           NEW_QUERY_LABEL, OPTIMIZER, QUERIES_PER_CLASS, SEED, STEPS, USE_DEFAULTS)

    whole = isinstance(value, int) and not isinstance(value, bool)
    if key in (USE_DEFAULTS, AUTO_RUN):
        return isinstance(value, bool)
    if key == STEPS:
        return whole and 0 <= value <= MAX_INNER_STEPS
    if key == LR:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and MIN_INNER_LR <= value <= MAX_INNER_LR
    if key == SEED:
        return whole and 0 <= value <= MAX_SEED
    if key == QUERIES_PER_CLASS:
        return whole and 0 <= value <= MAX_QUERIES_PER_CLASS
    if key == NEW_QUERY_LABEL:
        return whole and -1 <= value < MAX_WAYS
    if key == LAYOUT:
        return value in LAYOUTS
    if key in (OPTIMIZER, FINETUNE):
        return isinstance(value, str)  # checked against the offered choices when drawn (keep_choice_valid)
    if key == ALGORITHMS:
        return isinstance(value, list) and all(isinstance(name, str) for name in value)
    return False


def signature(ws: Workspace, settings: dict[str, Any]) -> tuple[Any, ...]:
    """What a stored copy must match to be current (cheap: ids, names, labels and settings)."""
    slots = tuple(tuple(None if e is None else e.id for e in c.slots) for c in ws.classes)
    return (ws.ways, ws.shots, slots, tuple(c.name for c in ws.classes),
            tuple((q.example.id, q.label) for q in ws.queries), repr(ws.omniglot),
            repr(sorted(settings.items())))


# --------------------------------------------------------------------------- the reload store

TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
STORE_MAX_FILES = 2000
STORE_MAX_BYTES = 512 * 1024 * 1024
STORE_MAX_AGE_S = 30 * 24 * 3600
"""Tasks untouched for a month are dropped; so are the oldest beyond the count and byte bounds."""


def new_token() -> str:
    """A fresh, unguessable store key (128 random bits)."""
    return secrets.token_urlsafe(16)


def valid_token(token: Any) -> bool:
    return isinstance(token, str) and bool(TOKEN.match(token))


@dataclass
class TaskStore:
    """Task files keyed by token in one folder, written atomically and kept within bounds."""

    directory: Path
    max_files: int = STORE_MAX_FILES
    max_bytes: int = STORE_MAX_BYTES
    max_age_s: float = STORE_MAX_AGE_S

    def path(self, token: str) -> Path:
        if not valid_token(token):
            raise ValueError("not a task token")
        return self.directory / f"{token}.zip"

    def save(self, token: str, data: bytes) -> None:
        atomic_write_bytes(self.path(token), data)
        self.prune(keep=token)

    def load(self, token: str) -> bytes | None:
        if not valid_token(token):
            return None
        try:
            path = self.path(token)
            if path.stat().st_size > MAX_TASK_FILE_BYTES:
                return None
            data = path.read_bytes()
            os.utime(path)  # recently used: pruned last
            return data
        except OSError:
            return None

    def prune(self, keep: str = "") -> int:
        """Drop expired files, then the least recently used beyond the bounds; returns how many."""
        entries = []
        for path in self.directory.glob("*.zip"):
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        entries.sort(reverse=True)  # newest first
        now, total, removed = time.time(), 0, 0
        for position, (mtime, size, path) in enumerate(entries):
            total += size
            over = position >= self.max_files or total > self.max_bytes or now - mtime > self.max_age_s
            if over and path.stem != keep:
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def default_store() -> TaskStore:
    from engine.paths import cache_dir

    directory = cache_dir() / "tasks"
    directory.mkdir(parents=True, exist_ok=True)
    return TaskStore(directory)
