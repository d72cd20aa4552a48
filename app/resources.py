"""What every session shares, made once per process and only read: the trained models, the device,
the Omniglot evaluation split, and how many threads and workers a comparison uses."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st
import torch

from app.compute_queue import ComputeQueue
from app.models import ModelEntry, fingerprint, load_models, models_dir
from engine.compare import AdaptedCache
from engine.device import describe_device, keep_freed_memory, resolve_device

if TYPE_CHECKING:
    from engine.data.omniglot import CharacterSet

THREADS_ENV = "META_PLAYGROUND_THREADS"
WORKERS_ENV = "META_PLAYGROUND_WORKERS"
MAX_THREADS = 4
MAX_WORKERS = 4
CACHE_ENV = "META_PLAYGROUND_ADAPTED_CACHE"
QUEUE_ENV = "META_PLAYGROUND_QUEUE"
DEFAULT_CACHED_ADAPTATIONS = 160
"""Adapted learners kept per process: two support sets each of eight sessions with all ten
algorithms (a 5-way Conv-4 adaptation holds about 0.5 MB of fast weights)."""
DEFAULT_QUEUED_REQUESTS = 32
"""Comparisons waiting or running at once, all sessions together; beyond it a session is told the
server is busy (each session has at most one, its newest: older ones are superseded)."""
CORES_PER_THREAD = 4
"""By default a comparison uses a quarter of the cores for PyTorch's own threads."""


@st.cache_resource(show_spinner="Loading the trained models…", max_entries=2)
def _models(directory: str, token: tuple[Any, ...], device: str) -> dict[str, ModelEntry]:
    """Checkpoints loaded once per process (per version of the files on disk); never modified.

    Then every object alive (libraries, models: ~260,000) is moved out of the garbage collector's
    reach: they live as long as the process, and a full collection scanning them costs ~150 ms."""
    models = load_models(Path(directory), device=device)
    gc.freeze()
    return models


def compute_threads() -> int:
    """PyTorch threads per comparison: ``$META_PLAYGROUND_THREADS``, else a quarter of the cores
    (at least 1, at most 4). These networks are tiny: on a 2-core machine one thread is about as
    fast as two when idle and many times faster when anything else is running (a training run,
    another session), where two threads fight over the cores."""
    env = os.environ.get(THREADS_ENV, "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(MAX_THREADS, (os.cpu_count() or 1) // CORES_PER_THREAD))


def compute_workers(algorithms: int) -> int:
    """Algorithms adapted at once per comparison (``$META_PLAYGROUND_WORKERS``, else the cores
    divided by the threads each uses, at most 4): ``compare`` runs them in threads, each on its own
    core (the README's Performance section has ``python -m engine.bench``'s figures for both ways)."""
    env = os.environ.get(WORKERS_ENV, "")
    if env.isdigit() and int(env) > 0:
        workers = int(env)
    else:
        workers = min(MAX_WORKERS, (os.cpu_count() or 1) // compute_threads())
    return max(1, min(workers, algorithms))


@st.cache_resource(show_spinner=False)
def _device() -> tuple[str, str]:
    torch.set_num_threads(compute_threads())
    keep_freed_memory()
    device = resolve_device("auto")
    return str(device), describe_device(device)


def device_description() -> str:
    """The device the models run on, in words (e.g. ``cpu (2 cores)``)."""
    return _device()[1]


@st.cache_resource(show_spinner="Loading the Omniglot evaluation split (first time only)…", max_entries=1)
def evaluation_split(data_dir: str) -> CharacterSet:
    from engine.data.omniglot import load_split

    return load_split(data_dir, "evaluation", progress=False)


def omniglot_status() -> tuple[str | None, str | None]:
    """(data dir, None) when the evaluation split is on disk, else (None, how to get it)."""
    try:
        from engine.data.omniglot import DatasetNotFoundError, find_source
        from engine.paths import resolve_data_dir
    except ImportError as error:  # pragma: no cover - engine incomplete
        return None, f"Omniglot sampling is unavailable: {error}"
    try:
        find_source(None, "evaluation")
    except DatasetNotFoundError as error:
        return None, str(error)
    return str(resolve_data_dir(None)), None


def get_models() -> dict[str, ModelEntry]:
    directory = models_dir()
    device, _ = _device()
    return _models(str(directory), fingerprint(directory), device)


def _env_count(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else default


@st.cache_resource(show_spinner=False)
def adapted_cache() -> AdaptedCache:
    """Adapted learners kept for every session of this process (``$META_PLAYGROUND_ADAPTED_CACHE``
    entries): a new query only predicts, a new support example or new settings re-adapt."""
    return AdaptedCache(_env_count(CACHE_ENV, DEFAULT_CACHED_ADAPTATIONS))


def queue_workers() -> int:
    """Threads of the shared comparison queue: ``$META_PLAYGROUND_WORKERS``, else one per core
    (each with :func:`compute_threads` PyTorch threads)."""
    return _env_count(WORKERS_ENV, max(1, (os.cpu_count() or 1) // compute_threads()))


@st.cache_resource(show_spinner=False)
def compute_queue() -> ComputeQueue:
    """The one queue every session's adaptations go through, so simultaneous requests never run
    more adaptations at once than there are cores (``$META_PLAYGROUND_QUEUE`` requests at most)."""
    return ComputeQueue(queue_workers(), _env_count(QUEUE_ENV, DEFAULT_QUEUED_REQUESTS))
