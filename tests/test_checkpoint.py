"""Checkpoints: crash-safe writes, exact resume, and surviving kill -9 and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnnzoo import checkpoint as ckpt_mod
from cnnzoo.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from cnnzoo.errors import WeightsError
from cnnzoo.train import TrainConfig, Trainer

CLI = [sys.executable, "-c", "import sys; from cnnzoo.cli.main import main; sys.exit(main())"]
FAST = dict(quiet=True, num_threads=1, tensorboard=False, plots=False)


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3, 2), value), "b": torch.arange(4.0) + value}


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path: Path) -> None:
    # Mixup/cutmix, EMA, label smoothing and warmup all draw on RNG or carry state.
    cfg = dict(
        model="lenet5", dataset="digits", epochs=4, batch_size=64, lr=3e-3, mixup=0.2,
        cutmix=1.0, ema_decay=0.9, label_smoothing=0.1, warmup_epochs=1, **FAST,
    )  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    Trainer(TrainConfig(**cfg, output_dir=str(straight))).fit()
    partial = Trainer(TrainConfig(**cfg, output_dir=str(split))).fit(stop_after=2)
    assert partial.epoch == [0, 1] and not partial.metrics
    assert not (split / "metrics.json").exists()
    assert load_checkpoint(split, "last").epoch == 2
    Trainer(TrainConfig(resume=str(split))).fit()

    a, b = load_checkpoint(straight, "last"), load_checkpoint(split, "last")
    assert a.epoch == b.epoch == 4
    assert a.weights.keys() == b.weights.keys()
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)  # EMA weights
    assert all(torch.equal(a.state["model"][k], b.state["model"][k]) for k in a.state["model"])
    drop = {"seconds", "images_per_s"}
    history = [{k: v for k, v in row.items() if k not in drop} for row in a.state["history"]]
    assert history == [{k: v for k, v in r.items() if k not in drop} for r in b.state["history"]]


def test_pair_roundtrip_and_mismatch_detection(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "last", _weights(1.0), {"epoch": 1, "note": [1, 2.5, None]})
    loaded = load_checkpoint(tmp_path, "last")
    assert loaded.epoch == 1 and loaded.state["note"] == [1, 2.5, None]
    assert torch.equal(loaded.weights["w"], _weights(1.0)["w"])
    # Weights from another save do not belong to this state: refuse rather than mix them.
    other = tmp_path / "other"
    other.mkdir()
    save_checkpoint(other, "last", _weights(2.0), {"epoch": 1})
    os.replace(other / "last.safetensors", tmp_path / "last.safetensors")
    with pytest.raises(WeightsError, match="inconsistent"):
        load_checkpoint(tmp_path, "last")


@pytest.mark.parametrize("fail_on_replace", [1, 2])
def test_crash_mid_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_on_replace: int
) -> None:
    save_checkpoint(tmp_path, "last", _weights(1.0), {"epoch": 1})
    real_replace = os.replace
    calls = {"n": 0}

    def dying_replace(src, dst):  # the process "dies" at this rename
        calls["n"] += 1
        if calls["n"] == fail_on_replace:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, "last", _weights(2.0), {"epoch": 2})
    monkeypatch.undo()
    # Replace 1 is the weights (old pair intact); after replace 2 failed, the new weights are in
    # place but the state is old: the loader takes the old weights from the .prev link.
    loaded = load_checkpoint(tmp_path, "last")
    assert loaded.epoch == 1 and torch.equal(loaded.weights["w"], _weights(1.0)["w"])


def test_crash_while_writing_temp_files_leaves_only_ignored_junk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, "last", _weights(1.0), {"epoch": 1})
    before = sorted(p.name for p in tmp_path.iterdir())

    def torn_state(state):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "_state_bytes", torn_state)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, "last", _weights(2.0), {"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # A temp file left by a kill -9 is never taken for a checkpoint, and is cleaned up.
    (tmp_path / ".last.state.pt.tmp-999-deadbeef").write_bytes(b"torn")
    assert load_checkpoint(tmp_path, "last").epoch == 1
    assert not checkpoint_exists(tmp_path, "best")
    ckpt_mod.remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and children inherit that; a user's
    # `cnnzoo train` in a terminal has the default disposition, which the test needs.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=_default_sigint,
    )


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (run / "last.state.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


RUN_ARGS = ["--model", "lenet5", "--dataset", "digits", "--batch-size", "16", "--lr", "2e-3",
            "--quiet", "--num-threads", "1", "--no-tensorboard", "--no-plots"]  # fmt: skip


def test_killed_run_resumes_to_completion(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _start([*RUN_ARGS, "--epochs", "20", "-o", str(run)], tmp_path)
    _wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(run, "last").epoch
    assert 1 <= done < 20
    resumed = subprocess.run(
        [*CLI, "train", "--resume", str(run), "--epochs", "3" if done < 3 else str(done + 1)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {done}" in resumed.stdout
    metrics = (run / "metrics.json").read_text()
    assert '"epochs_run": ' + str(max(3, done + 1)) in metrics
    assert not list(run.glob(".*.tmp-*"))


def test_ctrl_c_leaves_a_resumable_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _start([*RUN_ARGS, "--epochs", "20", "-o", str(run)], tmp_path)
    _wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"cnnzoo train --resume {run}" in err and "Traceback" not in err
    ckpt = load_checkpoint(run, "last")
    assert ckpt.epoch >= 1 and len(ckpt.state["history"]) == ckpt.epoch
    weights = load_file(str(run / "last.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
