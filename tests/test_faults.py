"""Faults a hostile world brings: kills during checkpoint writes, a full disk, signals."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path

import pytest
import torch

from cnnzoo import checkpoint as ckpt_mod
from cnnzoo.checkpoint import (
    CheckpointWriteError,
    checkpoint_exists,
    load_checkpoint,
    save_checkpoint,
)
from cnnzoo.errors import WeightsError


class Killed(BaseException):
    """The process 'dies' here: nothing after this point happens (not even cleanup)."""


def _weights(epoch: int) -> dict[str, torch.Tensor]:
    return {"w": torch.full((4, 3), float(epoch)), "b": torch.arange(3.0) * epoch}


class FileOps:
    """Counts the file-system operations a save performs and kills the process at one of them."""

    NAMES = ("replace", "unlink", "link")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = {name: getattr(os, name) for name in self.NAMES}
        self.calls = 0
        self.kill_at: int | None = None
        self.dead = False
        for name in self.NAMES:  # Path.unlink calls os.unlink, so it is counted too
            monkeypatch.setattr(ckpt_mod.os, name, self._wrap(name))

    def _wrap(self, name: str):
        def op(*args, **kwargs):
            self.calls += 1
            if self.dead or self.calls == self.kill_at:
                self.dead = True
                raise Killed(name)
            return self.real[name](*args, **kwargs)

        return op

    def run(self, kill_at: int | None, fn, *args) -> bool:
        """Run ``fn``; kill at the ``kill_at``-th operation. True when it was killed."""
        self.calls, self.kill_at, self.dead = 0, kill_at, False
        try:
            fn(*args)
        except Killed:
            return True
        finally:
            self.kill_at, self.dead = None, False
        return False


def _write_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many file operations one save over an existing checkpoint performs."""
    probe = tmp_path / "probe"
    probe.mkdir()
    save_checkpoint(probe, "last", _weights(1), {"epoch": 1})
    with monkeypatch.context() as patch:
        ops = FileOps(patch)
        ops.run(None, save_checkpoint, probe, "last", _weights(2), {"epoch": 2})
        return ops.calls


def test_two_kills_in_a_row_at_every_write_point_never_lose_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    points = _write_points(tmp_path, monkeypatch)
    assert points >= 4  # unlink .prev, link, two renames, unlink .prev
    for first, second in itertools.product(range(1, points + 1), repeat=2):
        run = tmp_path / f"run-{first}-{second}"
        run.mkdir()
        save_checkpoint(run, "last", _weights(1), {"epoch": 1})
        with monkeypatch.context() as patch:
            ops = FileOps(patch)
            assert ops.run(first, save_checkpoint, run, "last", _weights(2), {"epoch": 2})
            # The restarted process resumes from what is there, then dies again mid-save.
            resumed = load_checkpoint(run, "last")
            assert ops.run(second, save_checkpoint, run, "last", _weights(3), {"epoch": 3})
        loaded = load_checkpoint(run, "last")
        assert loaded.epoch in (1, 2, 3), (first, second)
        assert loaded.epoch >= resumed.epoch
        assert torch.equal(loaded.weights["w"], _weights(loaded.epoch)["w"]), (first, second)
        # And the run goes on: the next save and load work and leave no stale link behind.
        save_checkpoint(run, "last", _weights(4), {"epoch": 4})
        assert load_checkpoint(run, "last").epoch == 4
        assert not (run / "last.safetensors.prev").exists()


def test_loading_from_prev_repairs_the_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, "last", _weights(1), {"epoch": 1})
    with monkeypatch.context() as patch:
        ops = FileOps(patch)
        # Kill at the second rename: new weights in place, old state, old weights in .prev.
        replaces = 0

        def count_replaces(*args):
            nonlocal replaces
            replaces += 1
            if replaces == 2:
                raise Killed("replace")
            return ops.real["replace"](*args)

        patch.setattr(ckpt_mod.os, "replace", count_replaces)
        with pytest.raises(Killed):
            save_checkpoint(tmp_path, "last", _weights(2), {"epoch": 2})
    assert (tmp_path / "last.safetensors.prev").exists()
    assert load_checkpoint(tmp_path, "last").epoch == 1
    # The pair is whole again: last.safetensors itself holds epoch 1's weights.
    assert not (tmp_path / "last.safetensors.prev").exists()
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "last.safetensors")["w"], _weights(1)["w"])


def test_disk_full_keeps_the_previous_checkpoint_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, "last", _weights(1), {"epoch": 1})
    before = sorted(p.name for p in tmp_path.iterdir())
    real_fsync = os.fsync

    def full(fd: int) -> None:  # the data does not fit: ENOSPC surfaces at flush/fsync
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt_mod.os, "fsync", full)
    with pytest.raises(CheckpointWriteError, match=r"last\.safetensors: No space left on device"):
        save_checkpoint(tmp_path, "last", _weights(2), {"epoch": 2})
    monkeypatch.setattr(ckpt_mod.os, "fsync", real_fsync)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial temp file
    assert load_checkpoint(tmp_path, "last").epoch == 1


def test_weights_without_their_state_are_reported_not_ignored(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "last", _weights(1), {"epoch": 1})
    (tmp_path / "last.state.pt").unlink()
    assert not checkpoint_exists(tmp_path, "last")
    with pytest.raises(WeightsError, match=r"last\.safetensors has no last\.state\.pt beside it"):
        load_checkpoint(tmp_path, "last")


def test_a_state_file_that_is_not_plain_data_is_refused_in_one_line(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "last", _weights(1), {"epoch": 1})
    torch.save({"epoch": 1, "evil": Killed("x")}, tmp_path / "last.state.pt")
    with pytest.raises(WeightsError) as info:
        load_checkpoint(tmp_path, "last")
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message
    assert "not plain data" in message or "other than plain data" in message


# --- export never destroys what it reads or what is already there ------------------------------


@pytest.fixture()
def small_run(tmp_path: Path) -> Path:
    import cnnzoo
    from cnnzoo.train.config import TrainConfig
    from cnnzoo.weights import save_weights

    run = tmp_path / "run"
    run.mkdir()
    facts = {"num_classes": 10, "in_chans": 1, "class_names": [str(i) for i in range(10)],
             "mean": [0.5], "std": [0.25], "image_size": 32}  # fmt: skip
    TrainConfig(model="lenet5", dataset="digits", epochs=1).save(run / "config.json", data=facts)
    torch.manual_seed(0)
    save_weights(cnnzoo.create_model("lenet5"), run / "best.safetensors")
    return run


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from cnnzoo.cli.main import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_export_refuses_to_overwrite_its_own_checkpoint(small_run: Path, capsys) -> None:
    checkpoint = small_run / "best.safetensors"
    before = checkpoint.read_bytes()
    for extra in ([], ["--force"]):
        code, err = _cli(
            ["export", str(small_run), str(checkpoint), "--format", "torchscript", *extra], capsys
        )
        assert code == 2 and "files the model comes from" in err and err.count("\n") == 1
        assert checkpoint.read_bytes() == before


def test_export_replaces_an_existing_file_only_with_force(small_run: Path, tmp_path, capsys):
    out = tmp_path / "lenet.pt"
    out.write_bytes(b"precious")
    code, err = _cli(["export", str(small_run), str(out), "--format", "torchscript"], capsys)
    assert code == 2 and "exists; pass --force" in err
    assert out.read_bytes() == b"precious"
    code, err = _cli(
        ["export", str(small_run), str(out), "--format", "torchscript", "--force"], capsys
    )
    assert code == 0, err
    assert torch.jit.load(str(out)) is not None
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_failed_export_leaves_the_existing_file_alone(tmp_path: Path, monkeypatch) -> None:
    from cnnzoo import export as export_module

    out = tmp_path / "m.pt"
    out.write_bytes(b"precious")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))

    def drifting(model, example, path):  # a file that reloads with other outputs
        path.write_bytes(b"junk")
        return torch.full((2, 3), 1e6), "test"

    monkeypatch.setattr(export_module, "_export_torchscript", drifting)
    with pytest.raises(export_module.CnnzooError, match="nothing was written"):
        export_module.export_model(
            model, out, "torchscript", torch.randn(2, 3, 2, 2), overwrite=True
        )
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


# --- signals -------------------------------------------------------------------------------------


def test_sigterm_saves_says_how_to_resume_and_exits_143(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    argv = [sys.executable, "-m", "cnnzoo", "train", "--model", "lenet5", "--dataset", "digits",
            "--epochs", "40", "--batch-size", "16", "--quiet", "--num-threads", "1",
            "--no-tensorboard", "--no-plots", "-o", str(run)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "last.state.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # what a batch scheduler, docker stop or systemd sends
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and f"cnnzoo train --resume {run}" in err
    saved = load_checkpoint(run, "last")
    assert saved.epoch >= 1 and len(saved.state["history"]) == saved.epoch


# --- hand-edited run configs ------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda c: [], "expected a mapping of training options, got a list"),
        (lambda c: {**c, "lr": "fast"}, "lr"),
        (lambda c: {**c, "betas": 5}, "betas"),
        (lambda c: {**c, "data": {**c["data"], "std": [0]}}, "std must be positive"),
        (lambda c: {**c, "model": "lenet_caffe"}, "cannot load these weights into lenet_caffe"),
    ],
)
def test_a_hand_edited_run_config_is_one_line_naming_the_field(
    small_run: Path, capsys, edit, fragment: str
) -> None:
    import json

    config_path = small_run / "config.json"
    config_path.write_text(json.dumps(edit(json.loads(config_path.read_text()))))
    photo = small_run.parent / "x.png"
    from PIL import Image

    Image.new("L", (32, 32), 128).save(photo)
    code, err = _cli(["predict", str(small_run), str(photo)], capsys)
    assert code in (1, 2), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err and "TypeError" not in err and "AttributeError" not in err
    if fragment in ("lr", "betas", "expected a mapping"):
        assert "config.json" in lines[0]


def test_models_and_verify_treat_a_pattern_matching_nothing_alike(capsys) -> None:
    results = [_cli(argv, capsys) for argv in (["models", "zzz"], ["verify", "zzz*"])]
    for code, err in results:
        assert code == 2 and err.count("\n") == 1 and "no model matches" in err, err
    code, err = _cli(["verify", "lenet5", "--input-size", "-3"], capsys)
    assert code == 2 and "expected a positive integer" in err


def test_models_cache_key_follows_the_models_own_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnzoo.analysis import zoo_table

    before = {name: zoo_table.figures_key(name) for name in ("lenet5", "resnet20")}
    real = zoo_table._file_digest

    def edited(path: Path) -> bytes:  # as if models/lenet.py had been edited
        return b"edited" if path.name == "lenet.py" else real(path)

    monkeypatch.setattr(zoo_table, "_file_digest", edited)
    assert zoo_table.figures_key("lenet5") != before["lenet5"]
    assert zoo_table.figures_key("resnet20") == before["resnet20"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--num-threads", "100000"], "num-threads must be at most"),
        (["--dataset", "imagefolder:"], "imagefolder: needs the folder"),
        (["--data-dir", "/etc/hostname"], "is not a directory"),
        (["--schedule", "step", "--epochs", "10000000"], "epochs must be at most 100,000"),
        (["--min-lr-ratio", "-5"], "min-lr-ratio must be in [0, 1]"),
        (["--mixup", "inf"], "mixup must be >= 0"),
        (["--warmup-epochs", "inf"], "warmup-epochs must be >= 0"),
        (["--num-workers", "-1"], "num-workers must be >= 0"),
    ],
)
def test_nonsense_training_values_are_refused_before_anything_is_written(
    tmp_path: Path, capsys, argv: list[str], fragment: str
) -> None:
    run = tmp_path / "run"
    base = ["train", "--model", "lenet5", "--dataset", "digits", "-o", str(run)]
    code, err = _cli([*base, *argv], capsys)
    assert code == 2 and fragment in err and err.count("\n") == 1, err
    assert not run.exists()


def test_resume_into_another_folder_and_repeated_compare_models_are_refused(
    tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    common = ["--quiet", "--no-tensorboard", "--no-plots", "--num-threads", "1"]
    assert _cli(["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1",
                 "-o", str(run), *common], capsys)[0] == 0  # fmt: skip
    before = (run / "last.state.pt").read_bytes()
    code, err = _cli(["train", "--resume", str(run), "-o", str(tmp_path / "other"),
                      "--epochs", "2"], capsys)  # fmt: skip
    assert code == 2 and "continues that run in its own folder" in err
    assert (run / "last.state.pt").read_bytes() == before
    assert not (tmp_path / "other").exists()
    out = tmp_path / "cmp"
    code, err = _cli(["compare", "lenet5", "resnet20", "lenet5", "--dataset", "digits",
                      "-o", str(out)], capsys)  # fmt: skip
    assert code == 2 and "lenet5 named more than once" in err
    assert not out.exists() or not any(out.iterdir())


def test_the_command_line_loads_torch_only_inside_its_interrupt_handler() -> None:
    """`import cnnzoo` and the command's entry module leave torch unloaded, so a Ctrl-C while
    torch loads happens inside main()'s handler: exit 130, one line."""
    import subprocess
    import sys

    probe = "import sys, cnnzoo, cnnzoo.cli.main; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"

    # A Ctrl-C that lands while torch is being imported (an import hook raises it there).
    interrupt_in_torch = (
        "import sys\n"
        "class Hook:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Hook())\n"
        "from cnnzoo.cli.main import main\n"
        "sys.exit(main(['models']))\n"
    )
    done = subprocess.run([sys.executable, "-c", interrupt_in_torch], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert (done.returncode, done.stderr, done.stdout) == (130, "cnnzoo: interrupted\n", "")


@pytest.mark.parametrize(
    "signum, delay, code, line",
    [
        ("SIGINT", 0.3, 130, "cnnzoo: interrupted"),
        ("SIGINT", 0.8, 130, "cnnzoo: interrupted"),
        ("SIGINT", 1.2, 130, "cnnzoo: interrupted"),
        ("SIGTERM", 0.5, 143, "cnnzoo: terminated"),
    ],
)
def test_a_signal_right_after_start_is_one_line(
    signum: str, delay: float, code: int, line: str
) -> None:
    """While torch and the commands load, then or once the command has begun. A Ctrl-C that
    landed inside a library's import used to be swallowed there: 4 of 40 such runs either ran
    `verify` to the end (exit 0) or died of the signal (-2) after printing the line."""
    import signal
    import subprocess
    import sys
    import time

    # A shell starts background jobs with SIGINT ignored and children inherit it; a user at a
    # terminal has the default disposition.
    def default_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "cnnzoo", "verify", "*"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)  # fmt: skip
    time.sleep(delay)
    proc.send_signal(getattr(signal, signum))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == line and "Traceback" not in err
