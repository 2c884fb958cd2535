"""The training engine: it learns, writes a complete run, and refuses bad requests cleanly."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnzoo.checkpoint import load_checkpoint
from cnnzoo.cli.main import main
from cnnzoo.train import TrainConfig, Trainer, TrainingDiverged, fit, plan_input
from cnnzoo.train.optim import LRSchedule, param_groups

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

# Small, fast settings shared by the runs below (one thread: the runs are tiny and CI boxes are
# often shared, where extra threads only contend).
FAST = dict(quiet=True, num_threads=1, tensorboard=False, plots=False)
DIGITS = dict(model="lenet5", dataset="digits", batch_size=32, lr=3e-3, augment="none", **FAST)


def test_lenet5_learns_digits_and_writes_a_complete_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    history = fit(**{**DIGITS, "tensorboard": True, "plots": True}, epochs=5, output_dir=str(run))
    metrics = history.metrics
    # Measured: 97.2 % after 5 epochs (8x8 digits resized to LeNet's 32x32).
    assert metrics["test_top1"] >= 0.95
    assert metrics["test_top5"] >= metrics["test_top1"]
    assert metrics["epochs_run"] == 5 and metrics["params"] == 61_706
    assert metrics["train_seconds"] > 0 and 0 < metrics["test_loss"] < 0.5

    saved = json.loads((run / "metrics.json").read_text())
    for key in ("test_top1", "test_top5", "test_loss", "epochs_run", "train_seconds", "model",
                "dataset", "params", "best_epoch"):  # fmt: skip
        assert key in saved
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert list(rows[0]) == [
        "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"
    ]  # fmt: skip
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "lenet5" and config["data"]["num_classes"] == 10
    assert TrainConfig.load(run / "config.json").epochs == 5
    for name in ("best.safetensors", "last.safetensors", "best.state.pt", "last.state.pt",
                 "history.png", "confusion_matrix.png", "train.log"):  # fmt: skip
        assert (run / name).stat().st_size > 0, name
    assert list(run.glob("events.out.tfevents.*"))
    state = torch.load(run / "last.state.pt", weights_only=True)  # plain tensors and primitives
    assert state["epoch"] == 5 and len(state["history"]) == 5
    # The exported weights rebuild the model with the library's own loader.
    from cnnzoo import create_model
    from cnnzoo.weights import load_weights

    model = create_model("lenet5", num_classes=10, in_chans=1)
    load_weights(model, run / "last.safetensors")


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_lenet5_fashion_mnist_one_epoch(tmp_path: Path) -> None:
    metrics = fit(
        "lenet5", "fashion_mnist", epochs=1, batch_size=64, lr=2e-3, augment="none",
        output_dir=str(tmp_path / "r"), **FAST,
    ).metrics  # fmt: skip
    # Measured 0.848 after one epoch, ~15 s of CPU (the seeds' tutorial: 0.877 after three
    # epochs, in 151 s).
    assert metrics["test_top1"] >= 0.83


def test_plan_input_fits_models_to_small_images() -> None:
    as_is = plan_input("lenet5", 10, 1, (28, 28), {})
    assert as_is[:2] == ({}, None)  # LeNet-5 pads 28 px itself
    assert plan_input("lenet5", 10, 1, (8, 8), {})[1] == 32  # its fixed size
    kwargs, size, note = plan_input("vgg11", 10, 1, (28, 28), {})
    assert kwargs == {"small_input": True} and size is None and "small_input" in note
    kwargs, size, note = plan_input("alexnet", 10, 1, (28, 28), {})
    assert kwargs == {} and size == 64 and "resizing" in note  # minimum 63 px
    assert plan_input("alexnet", 10, 3, (32, 32), {}, image_size=96)[1] == 96


def test_schedule_warmup_then_cosine_per_iteration() -> None:
    model = nn.Linear(2, 2)
    cfg = TrainConfig(model="m", dataset="d", epochs=10, lr=0.1, warmup_epochs=1).resolved()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    sched = LRSchedule(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(sched.apply())
        sched.advance()
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)  # linear warmup
    assert lrs[10] == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert lrs[-1] < 1e-3 and opt.param_groups[0]["lr"] == lrs[-1]
    step = TrainConfig(model="m", dataset="d", epochs=9, lr=1.0, schedule="step").resolved()
    sched = LRSchedule(torch.optim.SGD(model.parameters(), lr=1.0), step, steps_per_epoch=2)
    factors = [sched.factor(s) for s in range(0, 18, 2)]
    assert factors == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])


def test_no_weight_decay_on_biases_and_norms() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {4, 2}  # conv and linear kernels only
    assert len(no_decay["params"]) == 4  # conv bias, BN weight + bias, linear bias


def test_auxiliary_heads_add_weighted_losses(tmp_path: Path) -> None:
    trainer = Trainer(TrainConfig(**DIGITS, epochs=1, output_dir=str(tmp_path / "r")))
    trainer.setup()

    class WithAux(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.net(x)
            return logits, 2 * logits  # an "auxiliary head" with a different loss

    x, y = next(iter(trainer.train_loader))
    trainer.train_module = WithAux(trainer.model)
    loss, logits = trainer._forward_loss(x, y, None, 1.0)
    ce = nn.functional.cross_entropy
    expected = ce(logits, y) + 0.3 * ce(2 * logits, y)
    assert torch.allclose(loss, expected) and logits.shape == (x.shape[0], 10)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = Trainer(TrainConfig(**DIGITS, epochs=3, output_dir=str(run)))
    trainer.setup()
    steps = len(trainer.train_loader)
    forwards = {"n": 0}

    def poison(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor | None:
        if module.training:
            forwards["n"] += 1
            if forwards["n"] > steps + 3:  # a few steps into epoch 2
                return output * float("nan")
        return None

    trainer.model.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match=r"NaN/inf at epoch 2.*epoch 1\) is in"):
        trainer.fit()
    ckpt = load_checkpoint(run, "last")
    assert ckpt.epoch == 1
    assert all(torch.isfinite(t).all() for t in ckpt.weights.values())
    assert not (run / "metrics.json").exists()


def test_cli_diverging_lr_exits_1_with_a_message(tmp_path: Path, capsys) -> None:
    code = main(["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "2",
                 "--optimizer", "sgd", "--lr", "1e6", "--quiet", "--num-threads", "1",
                 "--no-tensorboard", "--no-plots", "-o", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "NaN/inf" in err and "lower --lr" in err and "Traceback" not in err


def test_refuses_a_directory_holding_another_run(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": "resnet20"}')
    code = main(["train", "--model", "lenet5", "--dataset", "digits", "-o", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "already holds a training run" in err and "--resume" in err
    assert len(err.splitlines()) == 1
    assert (run / "config.json").read_text() == '{"model": "resnet20"}'  # untouched


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "epochs must be an integer > 0"),
        (["--batch-size", "-4"], "batch-size must be an integer > 0"),
        (["--lr", "0"], "lr must be > 0"),
        (["--lr", "abc"], "invalid float value"),
        (["--model", "lenet"], "did you mean lenet5"),
        (["--dataset", "fashion_mnst"], "fashion_mnist"),
        (["--val-split", "1.5"], "val-split must be in [0, 1)"),
        (["--random-erasing", "2"], "random-erasing must be in [0, 1]"),
    ],
)
def test_bad_requests_exit_2_with_one_line(
    tmp_path: Path, capsys, flags: list[str], message: str
) -> None:
    args = {"--model": "lenet5", "--dataset": "digits", "--epochs": "1"}
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        args[flag] = value
    argv = ["train", *[item for pair in args.items() for item in pair], "-o", str(tmp_path / "r")]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own type errors exit from the parser
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_missing_data_exits_1(tmp_path: Path, capsys) -> None:
    code = main(["train", "--model", "resnet20", "--dataset", "cifar10", "--data-dir",
                 str(tmp_path / "nothing"), "-o", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and "cifar" in err.lower() and len(err.splitlines()) == 1


def test_resnets_get_the_small_input_stem_for_small_images() -> None:
    kwargs, size, note = plan_input("resnet18", 10, 1, (28, 28), {})
    assert kwargs == {"small_input": True} and size is None and "small_input=True" in note
    # Weights made for the ImageNet stem keep it.
    assert plan_input("resnet18", 10, 1, (28, 28), {}, small_input=False)[0] == {}
    assert plan_input("resnet18", 10, 3, (224, 224), {})[0] == {}
    # Without a stated minimum, a stride-32 network gets 64 px: its last map keeps 2x2.
    assert plan_input("mobilenet_v2", 10, 1, (28, 28), {})[1] == 64
    assert plan_input("mobilenet_v2", 10, 3, (96, 96), {})[1] is None
    assert plan_input("resnet20", 10, 1, (8, 8), {})[1] is None  # stride 4: 2x2 already
    kwargs, size, note = plan_input("inception_v3", 10, 1, (28, 28), {})
    assert kwargs == {"aux_logits": False} and size == 96 and "auxiliary" in note


def test_overwrite_removes_only_what_cnnzoo_wrote(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    args = ["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1", "--quiet",
            "--num-threads", "1", "--no-plots", "-o", str(run)]  # fmt: skip
    assert main(args) == 0
    (run / "notes.txt").write_text("mine")
    (run / "mine").mkdir()
    assert main([*args, "--overwrite"]) == 0
    assert (run / "notes.txt").read_text() == "mine" and (run / "mine").is_dir()
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # the old run's events are gone


def test_a_folder_that_is_not_a_run_is_never_written_into(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.json").write_text('{"name": "my web app"}')
    (folder / "history.csv").write_text("my,own,data\n")
    for extra in ([], ["--overwrite"]):
        code = main(["train", "--model", "lenet5", "--dataset", "digits", "-o", str(folder),
                     *extra])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and "is not a cnnzoo run" in err and len(err.splitlines()) == 1
    assert (folder / "config.json").read_text() == '{"name": "my web app"}'
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "history.csv"]


def test_a_run_in_use_is_refused_with_the_holders_pid(tmp_path: Path, capsys) -> None:
    import os

    from cnnzoo.rundir import RunDir

    run = tmp_path / "run"
    holder = RunDir(run)
    holder.prepare(resume=False, overwrite=False, epochs=1)
    try:
        code = main(["train", "--model", "lenet5", "--dataset", "digits", "-o", str(run)])
        err = capsys.readouterr().err
        assert code == 1 and f"is in use by pid {os.getpid()}" in err
    finally:
        holder.unlock()
    assert not (run / "config.json").exists()


def test_a_start_that_fails_leaves_no_half_made_run(tmp_path: Path, capsys) -> None:
    run = tmp_path / "new"
    code = main(["train", "--model", "resnet20", "--dataset", "cifar10", "--data-dir",
                 str(tmp_path / "nothing"), "-o", str(run)])  # fmt: skip
    assert code == 1 and not run.exists()
    capsys.readouterr()
    code = main(["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1", "--quiet",
                 "--num-threads", "1", "--no-plots", "-o", str(run)])  # fmt: skip
    assert code == 0, capsys.readouterr().err  # the corrected command is not blocked


def test_resume_refuses_weights_without_their_state(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    fit(**DIGITS, epochs=1, output_dir=str(run))
    (run / "metrics.json").unlink()
    (run / "last.state.pt").unlink()
    best = (run / "best.safetensors").read_bytes()
    code = main(["train", "--resume", str(run), "--epochs", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "last.state.pt" in err and "missing" in err
    assert (run / "best.safetensors").read_bytes() == best  # nothing was overwritten


def test_fit_restores_the_callers_torch_settings(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fit(**{**DIGITS, "num_threads": 1}, epochs=1, deterministic=True,
            output_dir=str(tmp_path / "r"))  # fmt: skip
        assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)


def test_default_threads_leave_busy_cores_alone(monkeypatch) -> None:
    import os

    from cnnzoo.train import hardware
    from cnnzoo.train.hardware import default_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(hardware, "_busy_others", lambda: 0.2)
    assert default_threads() == 8 and default_threads(processes_here=2) == 4
    monkeypatch.setattr(hardware, "_busy_others", lambda: 5.6)
    assert default_threads() == 2
    monkeypatch.setattr(hardware, "_busy_others", lambda: 30.0)
    assert default_threads() == 1
    # Without /proc/stat: the load average, less the load this process made itself.
    monkeypatch.setattr(hardware, "_busy_others", lambda: None)
    monkeypatch.setattr(hardware, "_own_load", lambda: 4.0)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.6, 0.0, 0.0))
    assert default_threads() == 6


def test_busy_cores_are_measured_now_not_from_the_last_minute() -> None:
    """A process spinning on one core while we sample counts as about one more busy core; our
    own work during the sample does not; once it has exited it no longer counts (the load
    average would still show it for a minute). Other load on the machine is the baseline."""
    import os
    import subprocess
    import sys
    import time

    from cnnzoo.train.hardware import _busy_others

    baseline = _busy_others()
    assert baseline is not None
    room = min(1.0, (os.cpu_count() or 1) - baseline)  # what one spinner can add here
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = _busy_others()
    finally:
        spinner.kill()
        spinner.wait()
    time.sleep(0.2)
    after = _busy_others()
    assert busy is not None and after is not None
    assert busy >= baseline + room - 0.4
    assert after <= busy - room + 0.4


def test_an_unreadable_image_is_reported_every_epoch(tmp_path: Path) -> None:
    """A truncated JPEG passes the header check; each epoch that drops it says so."""
    import numpy as np
    from PIL import Image

    from cnnzoo.data import DataWarning

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / label / f"{i}.png")
    jpeg = tmp_path / "photos" / "a" / "broken.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:-1000])
    with pytest.warns(DataWarning, match="failed to decode this epoch") as caught:
        fit(model="lenet5", dataset=f"imagefolder:{tmp_path / 'photos'}", split=[17, 0, 0],
            val_split=0.0, epochs=2, batch_size=4, num_workers=0,
            output_dir=str(tmp_path / "r"), **FAST)  # fmt: skip
    assert sum(issubclass(w.category, DataWarning) for w in caught) == 2


def test_every_epoch_takes_len_loader_steps_even_when_a_batch_is_dropped(tmp_path: Path) -> None:
    """An image-folder loader drops a batch whose every image is unreadable; under DDP a rank
    that took fewer steps would leave the others waiting, so the last batch is repeated."""
    trainer = Trainer(TrainConfig(**DIGITS, epochs=1, output_dir=str(tmp_path / "r")))
    trainer.setup()
    loader = trainer.train_loader
    full = type(loader).__iter__

    class DropsOne(type(loader)):  # type: ignore[misc]
        def __iter__(self):
            for index, batch in enumerate(full(self)):
                if index != 3:
                    yield batch

    loader.__class__ = DropsOne
    stats = trainer.train_one_epoch(0)
    assert trainer.schedule.step_count == len(loader)
    assert stats["train_loss"] > 0
    trainer.close()


def test_precise_bn_recomputes_statistics_without_drawing_random_numbers() -> None:
    from cnnzoo.train.batchnorm import recompute_statistics

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten())
    batches = [(torch.randn(8, 1, 6, 6) * 3 + 5, None) for _ in range(5)]
    features = torch.cat([model[0](x) for x, _ in batches]).detach()
    before = torch.get_rng_state()
    used = recompute_statistics(model.train(), batches, limit=4)
    bn = model[1]
    assert used == 4 and bn.momentum == 0.1 and model.training and bn.training
    # The mean of the first 4 batches' means (equal batch sizes), not a trailing average.
    expected = features[:32].mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    assert torch.equal(torch.get_rng_state(), before)  # dropout stayed off
    assert recompute_statistics(nn.Linear(2, 2), batches, limit=4) == 0  # no batch norm
