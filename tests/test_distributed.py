"""Distributed meta-training (engine.distributed, engine.data.loader): every process draws its share of the
same global batch, and the gradients summed over processes are the whole batch's, so a 2-process run
(torchrun, gloo, loopback) ends where a 1-process run does, also after one of its ranks is killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine import distributed, train
from engine.checkpoint import load_tensors, read_metadata, read_tensor_metadata, save_tensors
from engine.data.loader import StepBatches, shard, step_batches
from engine.data.omniglot import CharacterSet, load_splits
from engine.data.tasks import Task
from engine.learners import LEARNERS, Learner, get_learner_class
from engine.nets import BackboneConfig
from engine.paths import REPO_ROOT

# Small enough to train in seconds on the tiny data set: 3-way 1-shot tasks, 8-channel Conv-4.
EPISODES = ["--ways", "3", "--shots", "1", "--queries", "2", "--channels", "8", "--val-ways", "3",
            "--val-tasks", "2", "--no-progress"]
LAUNCH_TIMEOUT_S = 120  # one torchrun launch: two Python processes importing torch on a busy machine


@pytest.fixture()
def chars(tiny_omniglot: Path, isolated_cache: Path) -> CharacterSet:
    return load_splits(tiny_omniglot, progress=False).train


def tiny_learner(name: str, chars: CharacterSet, config: train.TrainConfig, **overrides: object) -> Learner:
    cls = get_learner_class(name)
    learner_config = cls.config_for_data(cls.config_class(**overrides), chars, config)
    return cls(config=learner_config, backbone=BackboneConfig(channels=8), seed=0)


def same_tasks(left: list[Task], right: list[Task]) -> bool:
    return len(left) == len(right) and all(
        a.class_names == b.class_names and torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
        for a, b in zip(left, right, strict=True))


# Each learner with settings whose batch holds 3 items (pretrain: 3 labelled batches of 16 images).
LEARNER_SETTINGS: dict[str, dict[str, object]] = {"pretrain": {"batches": 3, "batch_size": 16}}


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_shares_weighted_by_size_sum_to_the_whole_batch_gradient(name: str, chars: CharacterSet) -> None:
    """What makes a distributed run exact, for every learner: the shares' meta-losses, each scaled by its
    share of the batch (1 and 2 of 3 tasks), have gradients that sum to the whole batch's."""
    config = train.TrainConfig(ways=3, shots=2, queries=2, meta_batch=3)
    learner = tiny_learner(name, chars, config, **LEARNER_SETTINGS.get(name, {}))
    whole = StepBatches(learner, chars, config)[0]
    assert len(whole.tasks) == whole.items == 3
    learner.meta_loss(whole.tasks).loss.backward()
    expected = {key: value.grad.clone() for key, value in learner.params.items() if value.grad is not None}
    for value in learner.params.values():
        value.grad = None
    shares = [StepBatches(learner, chars, config, rank, 2)[0].tasks for rank in range(2)]
    assert [len(tasks) for tasks in shares] == [1, 2]
    assert same_tasks(shares[0] + shares[1], whole.tasks)  # together, exactly the whole batch
    for tasks in shares:
        (learner.meta_loss(tasks).loss * (len(tasks) / whole.items)).backward()
    summed = {key: value.grad for key, value in learner.params.items() if value.grad is not None}
    assert summed.keys() == expected.keys() and expected
    for key in expected:
        torch.testing.assert_close(summed[key], expected[key], rtol=1e-4, atol=1e-6, msg=key)


def test_the_global_batch_is_the_same_for_any_number_of_processes_and_workers(chars: CharacterSet) -> None:
    """A step's tasks depend on the seed and the step alone: process slices are disjoint and add up to
    the 1-process batch, whatever the world size or the number of DataLoader workers; the step-wide draw
    (the number of ways) is shared by all of a step's tasks on every process."""
    config = train.TrainConfig(ways=4, shots=1, queries=1, meta_batch=5, meta_steps=4, seed=3)
    learner = tiny_learner("fomaml", chars, config, min_train_ways=2)
    alone = list(step_batches(StepBatches(learner, chars, config), 0, 4, workers=0))
    assert [batch.step for batch in alone] == [0, 1, 2, 3]
    assert len({batch.tasks[0].class_names for batch in alone}) == 4  # a new batch each step
    assert len({task.class_names for task in alone[0].tasks}) == 5  # of different tasks
    for batch in alone:
        assert len({task.ways for task in batch.tasks}) == 1
    assert len({batch.tasks[0].ways for batch in alone}) > 1  # the ways are drawn, per step
    for world_size in (2, 3, 5):
        slices = [shard(5, rank, world_size) for rank in range(world_size)]
        assert [index for part in slices for index in part] == list(range(5))
        for step in range(4):
            parts = [StepBatches(learner, chars, config, rank, world_size)[step].tasks for rank in range(world_size)]
            assert same_tasks([task for part in parts for task in part], alone[step].tasks)
    with_workers = list(step_batches(StepBatches(learner, chars, config, 1, 2), 1, 4, workers=2))
    assert [batch.step for batch in with_workers] == [1, 2, 3]
    for batch in with_workers:
        assert same_tasks(batch.tasks, StepBatches(learner, chars, config, 1, 2)[batch.step].tasks)
    other_seed = train.TrainConfig(**{**config.__dict__, "seed": 4})
    assert not same_tasks(StepBatches(learner, chars, other_seed)[0].tasks, alone[0].tasks)


def test_a_batch_smaller_than_the_number_of_processes_is_refused(tiny_omniglot: Path, isolated_cache: Path,
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """ProtoNet trains on one episode a step by default: 2 processes cannot share it, and engine.train says
    which flag to raise instead of training something else (pretrain: its --batches)."""
    with pytest.raises(ValueError, match="cannot give each of 2 processes one"):
        shard(1, 0, 2)
    # Rank 0 of 2 as far as engine.train can tell, without a second process to talk to.
    monkeypatch.setattr(distributed, "start", lambda device: distributed.Ranks(rank=0, world_size=2))
    monkeypatch.setattr(distributed.Ranks, "broadcast", lambda self, value: value)
    for name, flag in (("protonet", "--meta-batch"), ("pretrain", "--batches")):
        args = ["--algorithm", name, "--out", str(tmp_path / name), "--data-dir", str(tiny_omniglot), *EPISODES]
        if name == "protonet":
            args += ["--meta-batch", "1"]
        assert train.main(args) == 2
        assert f"pass {flag} 2 or more" in capsys.readouterr().err
        assert not (tmp_path / name).exists()


def test_a_resumed_run_takes_its_annealed_learning_rate_from_the_step_it_stopped_at(
        tiny_omniglot: Path, isolated_cache: Path, tmp_path: Path) -> None:
    """Reptile anneals its step size to 0 over the schedule: a run paused after its first step and resumed
    ends bit-identical to an uninterrupted one (its first resumed step once took the step-0 rate)."""
    straight, paused = tmp_path / "straight", tmp_path / "paused"
    assert train.main([*reptile_run(straight, tiny_omniglot, 6), "--workers", "0"]) == 0
    assert train.main([*reptile_run(paused, tiny_omniglot, 6), "--workers", "0", "--max-minutes", "1e-9"]) == 0
    assert read_metadata(paused / "last")["meta_step"] == 1
    assert train.main([*reptile_run(paused, tiny_omniglot, 6), "--workers", "0", "--resume"]) == 0
    final, expected = load_tensors(paused / "last.safetensors"), load_tensors(straight / "last.safetensors")
    for name in expected:
        assert torch.equal(final[name], expected[name]), name


def test_a_state_saved_by_the_former_sampler_resumes_with_a_note(tiny_omniglot: Path, isolated_cache: Path,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Before tasks were keyed by step, resume.safetensors held the state of one task generator. Such a
    run still resumes (weights, optimizer, step) and says that its later tasks differ from the former
    trainer's."""
    run = tmp_path / "run"
    assert train.main([*reptile_run(run, tiny_omniglot, 2), "--workers", "0"]) == 0
    path = run / "resume.safetensors"
    state = json.loads(read_tensor_metadata(path)["state"])
    del state["sampling"]
    state["rng"] = {"bit_generator": "PCG64", "state": {"state": 1, "inc": 1}, "has_uint32": 0, "uinteger": 0}
    save_tensors(path, load_tensors(path), metadata={"state": json.dumps(state)})
    capsys.readouterr()
    assert train.main([*reptile_run(run, tiny_omniglot, 4), "--workers", "0", "--resume"]) == 0
    assert "saved by the former task sampler; from step 2 on" in capsys.readouterr().err
    assert read_metadata(run / "last")["meta_step"] == 4


# ------------------------------------------------------------------------------------ torchrun on loopback

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def torchrun(args: list[str]) -> list[str]:
    """``torchrun --nproc_per_node 2 -m engine.train ARGS`` on this machine's loopback (gloo on the CPU)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "engine.train", *args]


def launch_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def assert_close_weights(run: Path, reference: Path) -> None:
    final, expected = load_tensors(run / "last.safetensors"), load_tensors(reference / "last.safetensors")
    assert final.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


def curve_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "curve.jsonl").read_text().splitlines()]


def maml_run(out: Path, data_dir: Path, steps: int) -> list[str]:
    # 3 tasks a step: one process takes 1, the other 2, so the shares' weights are uneven.
    return ["--algorithm", "maml", "--out", str(out), "--data-dir", str(data_dir), "--meta-steps", str(steps),
            "--meta-batch", "3", "--inner-steps", "1", "--val-every", "2", *EPISODES]


def test_two_processes_end_where_one_process_does(tiny_omniglot: Path, isolated_cache: Path, tmp_path: Path) -> None:
    """MAML over 2 processes (each drawing its share in a DataLoader worker) against 1 process drawing the
    same global batches in the training process: the same weights to float tolerance, one curve written
    by rank 0 only, with the whole batch's metrics; and the same again after both resume in 1 process."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert train.main([*maml_run(one, tiny_omniglot, 4), "--workers", "0"]) == 0
    done = subprocess.run(torchrun([*maml_run(two, tiny_omniglot, 4), "--workers", "1"]), env=launch_env(),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close_weights(two, one)
    assert curve_steps(two) == [1, 2, 3, 4]
    for ours, theirs in zip((two / "curve.jsonl").read_text().splitlines(),
                            (one / "curve.jsonl").read_text().splitlines(), strict=True):
        for key in ("loss", "query_accuracy"):
            assert json.loads(ours)[key] == pytest.approx(json.loads(theirs)[key], rel=1e-5)
    assert read_metadata(two / "last")["pieces"][0]["processes"] == 2
    assert done.stdout.count("done: 4 meta-steps") == 1  # rank 0 reports; rank 1 stays quiet
    # The saved state is the same for any number of processes: the 2-process run carries on in 1.
    for run in (one, two):
        assert train.main([*maml_run(run, tiny_omniglot, 6), "--resume"]) == 0
    assert_close_weights(two, one)
    assert [piece["processes"] for piece in read_metadata(two / "last")["pieces"]] == [2, 1]


def process_of_rank(launcher: int, rank: int) -> int:
    """The pid of training process ``rank`` among the ``launcher``'s descendants (its DataLoader workers
    carry the same RANK but are children of a process that does)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile

    def rank_of(pid: int) -> str | None:
        try:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            return None
        return next((item[5:].decode() for item in environ if item.startswith(b"RANK=")), None)

    def descends(pid: int) -> bool:
        while pid in parents and pid != launcher:
            pid = parents[pid]
        return pid == launcher

    found = [pid for pid in parents if pid != launcher and descends(pid) and rank_of(pid) == str(rank)
             and rank_of(parents[pid]) is None]
    assert len(found) == 1, f"expected one process of rank {rank}, found {found}"
    return found[0]


def reptile_run(out: Path, data_dir: Path, steps: int) -> list[str]:
    # Reptile: a meta-gradient that is a difference of weights, plain SGD, a learning rate annealed over
    # the schedule; a state saved after every step (--checkpoint-minutes 0) so the kill lands between saves.
    return ["--algorithm", "reptile", "--out", str(out), "--data-dir", str(data_dir), "--meta-steps", str(steps),
            "--meta-batch", "2", "--shots", "2", "--inner-steps", "2", "--val-every", "1000",
            "--checkpoint-minutes", "0", *EPISODES]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank to kill through /proc")
def test_a_distributed_run_killed_in_one_rank_resumes_where_it_stopped(tiny_omniglot: Path, isolated_cache: Path,
                                                                       tmp_path: Path) -> None:
    """SIGKILL to rank 1 of a 2-process run mid-way (torchrun then stops rank 0); ``--resume`` over 2
    processes continues from the last state rank 0 saved and ends where an uninterrupted run ends."""
    steps = 30
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train.main([*reptile_run(straight, tiny_omniglot, steps), "--workers", "0"]) == 0

    launcher = subprocess.Popen(torchrun(reptile_run(killed, tiny_omniglot, steps)), env=launch_env(), cwd=REPO_ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while time.monotonic() < deadline and launcher.poll() is None:
            state = killed / "resume.json"
            try:
                if json.loads(state.read_text())["step"] >= 3:
                    break
            except (OSError, ValueError):  # not written yet
                pass
            time.sleep(0.02)
        assert launcher.poll() is None, "the run ended before it could be interrupted"
        os.kill(process_of_rank(launcher.pid, 1), signal.SIGKILL)
        assert launcher.wait(timeout=LAUNCH_TIMEOUT_S) != 0  # torchrun reports the failed rank
    finally:
        if launcher.poll() is None:
            launcher.kill()
    interrupted_at = json.loads(read_tensor_metadata(killed / "resume.safetensors")["state"])["step"]
    assert 3 <= interrupted_at < steps, "the run finished before it could be interrupted"

    resumed = subprocess.run(torchrun([*reptile_run(killed, tiny_omniglot, steps), "--resume"]), env=launch_env(),
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_close_weights(killed, straight)
    metadata = read_metadata(killed / "last")
    assert metadata["meta_step"] == steps
    assert [piece["start_step"] for piece in metadata["pieces"]] == [0, interrupted_at]
    assert curve_steps(killed) == list(range(1, steps + 1))  # what the killed piece logged past its save is gone
