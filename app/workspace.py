"""One browser session's task: support classes, queries, messages, and how images get in.

Pure Python, no Streamlit: the UI keeps one :class:`Workspace` in ``st.session_state`` and calls
these methods, and tests can drive them directly. Nothing here is shared between sessions; images
and their preprocessing live in :mod:`app.images`.

Design rules that keep user work safe:

* a class always has :data:`MAX_SHOTS` slots and the workspace :data:`MAX_WAYS` classes; N and K only
  choose how many are *visible*, so lowering them hides drawings instead of deleting them;
* an image that cannot be used (blank, corrupt, too large) never replaces anything; it becomes a
  message attached to the place it came from (``messages[target]``).
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from app.images import Example, Source, example_from_bytes, example_from_pixels
from engine.data.preprocess import ImagePreprocessError

if TYPE_CHECKING:
    from engine.data.omniglot import CharacterSet

MIN_WAYS, MAX_WAYS = 2, 20
MIN_SHOTS, MAX_SHOTS = 1, 10
MAX_QUERIES = 60

Level = Literal["error", "warning", "info", "success"]
QUERIES = "queries"
"""Message target of the query section; support classes use :func:`class_target`."""
TASK = "task"
"""Message target of the task as a whole (task files, task links), shown under the toolbar."""


def class_target(index: int) -> str:
    return f"class-{index}"


@dataclass(frozen=True)
class Message:
    level: Level
    text: str


# --------------------------------------------------------------------------- the task


@dataclass
class SupportClass:
    name: str
    slots: list[Example | None] = field(default_factory=lambda: [None] * MAX_SHOTS)

    def examples(self, shots: int) -> list[Example]:
        return [example for example in self.slots[:shots] if example is not None]

    def hidden_count(self, shots: int) -> int:
        return sum(example is not None for example in self.slots[shots:])

    def first_free(self, shots: int) -> int | None:
        for index in range(shots):
            if self.slots[index] is None:
                return index
        return None


@dataclass
class Query:
    example: Example
    label: int | None = None  # index of the true class, if the user said


def default_class_name(index: int) -> str:
    return f"Class {index + 1}"


@dataclass
class Workspace:
    """Everything one session has built."""

    ways: int = 5
    shots: int = 1
    classes: list[SupportClass] = field(
        default_factory=lambda: [SupportClass(default_class_name(i)) for i in range(MAX_WAYS)])
    queries: list[Query] = field(default_factory=list)
    # Bumped when the task is replaced wholesale: widgets keyed with it start fresh.
    generation: int = 0
    # How the current task was sampled from Omniglot (seed etc.), if it was.
    omniglot: dict[str, Any] | None = None
    messages: dict[str, list[Message]] = field(default_factory=dict)
    # Last drawing-pad nonce handled per pad (see app.canvas.drawing_pad).
    pad_seen: dict[str, str] = field(default_factory=dict)
    # Upload-widget generation per target: bumped after handling files so the widget empties.
    upload_generation: dict[str, int] = field(default_factory=dict)
    # The task as it was before the last "sample" / "clear all", for one-click restore.
    previous: dict[str, Any] | None = None
    # (pad key, token): the pad that should take keyboard focus (after the previous class filled up).
    focus: tuple[str, str] | None = None

    # -- keyboard flow --------------------------------------------------------------------------
    def request_focus(self, pad_key: str) -> None:
        self.focus = (pad_key, uuid.uuid4().hex[:8])

    def focus_token(self, pad_key: str) -> str:
        """The pending focus token for ``pad_key`` (handed out once), else ""."""
        if self.focus and self.focus[0] == pad_key:
            token, self.focus = self.focus[1], None
            return token
        return ""

    # -- messages ---------------------------------------------------------------------------
    def say(self, target: str, level: Level, text: str) -> None:
        self.messages.setdefault(target, []).append(Message(level, text))

    def clear_messages(self, target: str) -> None:
        self.messages.pop(target, None)

    def messages_for(self, target: str) -> list[Message]:
        return list(self.messages.get(target, []))

    # -- shape -------------------------------------------------------------------------------
    def set_size(self, ways: int, shots: int) -> None:
        self.ways = int(min(max(ways, MIN_WAYS), MAX_WAYS))
        self.shots = int(min(max(shots, MIN_SHOTS), MAX_SHOTS))

    @property
    def visible_classes(self) -> list[SupportClass]:
        return self.classes[: self.ways]

    def class_names(self) -> list[str]:
        return [self.display_name(i) for i in range(self.ways)]

    def display_name(self, index: int) -> str:
        name = self.classes[index].name.strip()
        return name or default_class_name(index)

    def rename(self, index: int, name: str) -> None:
        self.classes[index].name = name.strip()[:60]

    def hidden_classes_with_examples(self) -> list[int]:
        return [i for i in range(self.ways, MAX_WAYS) if any(e is not None for e in self.classes[i].slots)]

    # -- support examples ----------------------------------------------------------------------
    def add_support(self, index: int, example: Example) -> int | None:
        """Put ``example`` in the class's first free visible slot; None (and a message) if full."""
        slot = self.classes[index].first_free(self.shots)
        if slot is None:
            self.say(class_target(index), "warning",
                     f"{self.display_name(index)} already has {self.shots} examples (K = {self.shots}): "
                     "delete one, or raise K, to add another.")
            return None
        self.classes[index].slots[slot] = example
        return slot

    def delete_support(self, index: int, example_id: str) -> bool:
        slots = self.classes[index].slots
        for i, example in enumerate(slots):
            if example is not None and example.id == example_id:
                slots[i] = None
                self.clear_messages(class_target(index))
                return True
        return False

    def clear_class(self, index: int) -> None:
        self.classes[index].slots = [None] * MAX_SHOTS
        self.clear_messages(class_target(index))

    def support_count(self) -> int:
        return sum(len(c.examples(self.shots)) for c in self.visible_classes)

    # -- queries ---------------------------------------------------------------------------------
    def add_query(self, example: Example, label: int | None = None) -> bool:
        if len(self.queries) >= MAX_QUERIES:
            self.say(QUERIES, "warning", f"At most {MAX_QUERIES} queries: delete some to add more.")
            return False
        self.queries.append(Query(example, label))
        return True

    def delete_query(self, example_id: str) -> bool:
        before = len(self.queries)
        self.queries = [q for q in self.queries if q.example.id != example_id]
        if len(self.queries) != before:
            self.clear_messages(QUERIES)
        return len(self.queries) != before

    def set_query_label(self, example_id: str, label: int | None) -> None:
        for query in self.queries:
            if query.example.id == example_id:
                query.label = label

    def query_label(self, query: Query) -> int | None:
        """The query's class if it is one of the visible classes, else None."""
        return query.label if query.label is not None and 0 <= query.label < self.ways else None

    # -- ingestion ---------------------------------------------------------------------------------
    def ingest(self, target: str, data: bytes, source: Source, name: str,
               query_label: int | None = None) -> Example | None:
        """Preprocess ``data`` and place it at ``target`` (a query with class ``query_label``, when
        given); on failure leave a message there."""
        try:
            example = example_from_bytes(data, source, name)
        except ImagePreprocessError as error:
            what = "The drawing" if source == "drawing" else f"“{name}”"
            self.say(target, "error", f"{what} was not added: {error}")
            return None
        if example.frames > 1:
            self.say(target, "info", f"“{name}” is animated ({example.frames} frames): its first frame was used.")
        if target == QUERIES:
            return example if self.add_query(example, query_label) else None
        index = int(target.split("-", 1)[1])
        return example if self.add_support(index, example) is not None else None

    def ingest_files(self, target: str, files: list[tuple[str, bytes]], source: Source = "upload",
                     query_label: int | None = None) -> int:
        """Several uploads into one class (filling free slots in order) or into the queries."""
        self.clear_messages(target)
        added = 0
        for position, (name, data) in enumerate(files):
            if target != QUERIES:
                index = int(target.split("-", 1)[1])
                if self.classes[index].first_free(self.shots) is None:
                    rest = len(files) - position
                    self.say(target, "warning",
                             f"{self.display_name(index)} is full (K = {self.shots}): {rest} file"
                             f"{'s were' if rest > 1 else ' was'} not added. Delete examples or raise K.")
                    break
            if self.ingest(target, data, source, name, query_label) is not None:
                added += 1
        return added

    # -- the task the algorithms see ---------------------------------------------------------------
    def empty_classes(self) -> list[int]:
        return [i for i, c in enumerate(self.visible_classes) if not c.examples(self.shots)]

    def support_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(images [n, 28, 28], labels [n]) of the visible support set."""
        images, labels = [], []
        for label, support_class in enumerate(self.visible_classes):
            for example in support_class.examples(self.shots):
                images.append(example.pixels)
                labels.append(label)
        if not images:
            return np.zeros((0, 28, 28), np.float32), np.zeros(0, np.int64)
        return np.stack(images).astype(np.float32), np.asarray(labels, dtype=np.int64)

    def query_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(images [q, 28, 28], labels [q] with -1 where unknown)."""
        if not self.queries:
            return np.zeros((0, 28, 28), np.float32), np.zeros(0, np.int64)
        images = np.stack([q.example.pixels for q in self.queries]).astype(np.float32)
        labels = [self.query_label(q) for q in self.queries]
        return images, np.asarray([-1 if label is None else label for label in labels], dtype=np.int64)

    def support_key(self) -> tuple[Any, ...]:
        """Identity of what the algorithms adapt to: N and the support set (not names or queries)."""
        return (self.ways, tuple(tuple(e.id for e in c.examples(self.shots)) for c in self.visible_classes))

    def task_key(self) -> tuple[Any, ...]:
        """Identity of what the algorithms compute on (not names or query labels)."""
        return (*self.support_key(), tuple(q.example.id for q in self.queries))

    # -- wholesale changes ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {"ways": self.ways, "shots": self.shots, "classes": copy.deepcopy(self.classes),
                "queries": copy.deepcopy(self.queries), "omniglot": copy.deepcopy(self.omniglot)}

    def has_content(self) -> bool:
        return bool(self.queries) or any(e is not None for c in self.classes for e in c.slots)

    def _replace(self, classes: list[SupportClass], queries: list[Query], omniglot: dict[str, Any] | None,
                 ways: int | None = None, shots: int | None = None, keep_previous: bool = True) -> None:
        if keep_previous and self.has_content():
            self.previous = self.snapshot()
        self.classes, self.queries, self.omniglot = classes, queries, omniglot
        if ways is not None:
            self.ways = ways
        if shots is not None:
            self.shots = shots
        self.messages.clear()
        self.generation += 1

    def replace_task(self, classes: list[SupportClass], queries: list[Query], omniglot: dict[str, Any] | None,
                     ways: int, shots: int) -> None:
        """A whole task from elsewhere (a task file, the reload store); the current one stays restorable."""
        self._replace(classes, queries, omniglot, ways, shots)

    def set_labels(self, example_ids: list[str], label: int | None) -> int:
        """Give every listed query the class ``label`` (None: unknown); returns how many changed."""
        wanted, changed = set(example_ids), 0
        for query in self.queries:
            if query.example.id in wanted and query.label != label:
                query.label = label
                changed += 1
        return changed

    def clear_all(self) -> None:
        self._replace([SupportClass(default_class_name(i)) for i in range(MAX_WAYS)], [], None)

    def restore_previous(self) -> bool:
        if not self.previous:
            return False
        previous, self.previous = self.previous, None
        current = self.snapshot() if self.has_content() else None
        self._replace(previous["classes"], previous["queries"], previous["omniglot"], previous["ways"],
                      previous["shots"], keep_previous=False)
        self.previous = current
        return True

    def load_omniglot(self, characters: "CharacterSet", ways: int, shots: int, queries_per_class: int,
                      seed: int) -> None:
        """Fill support and queries with a task sampled from ``characters`` (the evaluation split)."""
        from engine.data.tasks import sample_task

        task = sample_task(characters, ways, shots, queries_per_class, np.random.default_rng(seed))
        support_x = task.support_x.detach().cpu().numpy().reshape(-1, 28, 28)
        support_y = task.support_y.detach().cpu().numpy().reshape(-1)
        query_x = task.query_x.detach().cpu().numpy().reshape(-1, 28, 28)
        query_y = task.query_y.detach().cpu().numpy().reshape(-1)
        names = list(getattr(task, "class_names", ()) or [])
        classes = []
        for index in range(MAX_WAYS):
            name = pretty_character_name(names[index]) if index < min(ways, len(names)) else default_class_name(index)
            classes.append(SupportClass(name))
        filled = [0] * ways
        for image, label in zip(support_x, support_y):
            label = int(label)
            if filled[label] < MAX_SHOTS:
                name = names[label] if label < len(names) else ""
                classes[label].slots[filled[label]] = example_from_pixels(image, "omniglot", name)
                filled[label] += 1
        queries = [Query(example_from_pixels(image, "omniglot", ""), int(label))
                   for image, label in list(zip(query_x, query_y))[:MAX_QUERIES]]
        self._replace(classes, queries, {"seed": int(seed), "ways": ways, "shots": shots,
                                         "queries_per_class": queries_per_class}, ways=ways, shots=shots)


def pretty_character_name(name: str) -> str:
    """``"Alphabet_of_the_Magi/character07"`` -> ``"Alphabet of the Magi · 07"``."""
    text = str(name)
    if "/" in text:
        alphabet, character = text.rsplit("/", 1)
        number = character.replace("character", "").strip() or character
        alphabet = alphabet.split("/")[-1].replace("_", " ")
        return f"{alphabet} · {number}"[:60]
    return text.replace("_", " ")[:60]
