"""BatchNorm folding, optimize() and export round-trips (issue "Speed")."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

import cnnzoo
import cnnzoo.cli.main as cli_main
from cnnzoo.optimize import (
    OptimizationError,
    find_conv_bn_pairs,
    fold_batchnorms,
    fold_conv_bn,
    interleaved_medians,
    optimize,
)

ROOT = Path(__file__).resolve().parents[1]
export_module = importlib.import_module("cnnzoo.export")


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine terms, so folding has something to do."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.25)
            if module.affine:
                module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval()


@pytest.mark.parametrize(
    ("bias", "groups", "affine"),
    [(True, 1, True), (False, 1, True), (False, 4, True), (False, 8, False)],
)
def test_folding_a_conv_and_its_batchnorm_is_exact(bias: bool, groups: int, affine: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=groups, bias=bias)
    bn = _randomize_batchnorms(nn.BatchNorm2d(16, eps=1e-3, affine=affine))
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        expected = bn(conv(x))
        fold_conv_bn(conv, bn)
        got = conv(x)
    assert conv.bias is not None and conv.bias.shape == (16,)
    assert (got - expected).abs().max().item() <= 1e-5
    # The fold is a real change of weights, not a no-op that happens to pass.
    assert (
        expected - nn.functional.conv2d(x, conv.weight, None, padding=1, groups=groups)
    ).abs().max() > 1e-2


class _SharedOutput(nn.Module):
    """conv1's output also feeds the residual: folding bn1 into it would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        return self.bn1(y) + y + self.bn2(self.conv2(x))


def test_only_batchnorms_that_read_nothing_but_a_conv_are_folded() -> None:
    model = _randomize_batchnorms(_SharedOutput())
    assert find_conv_bn_pairs(model) == [("conv2", "bn2")]
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        expected = model(x)
        assert fold_batchnorms(model) == [("conv2", "bn2")]
        got = model(x)
    assert isinstance(model.bn2, nn.Identity) and isinstance(model.bn1, nn.BatchNorm2d)
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize(("name", "batchnorms"), [("resnet18", 20), ("mobilenet_v2", 52)])
def test_optimize_matches_eager_and_leaves_the_model_alone(name: str, batchnorms: int) -> None:
    torch.manual_seed(0)
    model = _randomize_batchnorms(cnnzoo.create_model(name, num_classes=10))
    model.train()  # optimize() must work on a copy in eval mode, whatever the caller's mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)

    fast = optimize(model, x, compile=False)

    assert model.training
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batchnorms
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.module.modules()) == 0

    report = fast.report
    assert report.folded_batchnorms == batchnorms
    assert report.backend == "eager"
    assert {"eager", "eager+folded+contiguous", "eager+folded+channels_last"} <= set(
        report.timings_ms
    )
    model.eval()
    with torch.no_grad():
        expected = model(x)
        other = torch.randn(3, 3, 32, 32)  # another batch size goes through the same path
        expected_other = model(other)
    scale = expected.abs().max().item()
    assert (fast(x) - expected).abs().max().item() <= 1e-4 * scale
    assert (fast(other) - expected_other).abs().max().item() <= 1e-4 * scale
    assert report.max_abs_diff <= 1e-4 * report.output_scale
    assert "folded" in str(report)


def test_optimize_raises_when_outputs_differ_beyond_the_tolerance() -> None:
    model = _randomize_batchnorms(cnnzoo.create_model("resnet18", num_classes=10))
    # Folding changes float rounding, so a zero tolerance cannot be met.
    with pytest.raises(OptimizationError, match="differ from eager"):
        optimize(
            model, torch.randn(1, 3, 32, 32), compile=False, channels_last=False, tolerance=0.0
        )


def test_optimize_rejects_bad_arguments() -> None:
    model = cnnzoo.create_model("lenet5", num_classes=10)
    with pytest.raises(ValueError, match="unknown backend"):
        optimize(model, torch.randn(1, 3, 32, 32), backend="tensorrt")


def test_interleaved_medians_rotate_turns_and_repeat_short_calls() -> None:
    log: list[str] = []

    def call(key: str, seconds: float) -> None:
        log.append(key)
        time.sleep(seconds)

    fns = {"short": partial(call, "short", 0.001), "long": partial(call, "long", 0.02)}
    medians = interleaved_medians(fns, warmup=1, rounds=4, budget_s=60.0, min_turn_s=0.01)
    # A 1 ms call is repeated until its turn lasts 10 ms; a 20 ms call runs once a turn.
    assert 4 * 5 <= log.count("short") - 1 <= 4 * 11
    assert log.count("long") == 1 + 4
    assert 0.001 <= medians["short"] < 0.005 and 0.02 <= medians["long"] < 0.04
    timed = log[2:]
    runs = [key for i, key in enumerate(timed) if i == 0 or timed[i - 1] != key]
    # Each turn starts with the candidate that ended the one before (the order rotates), so
    # four turns of two make five runs of calls, not eight.
    assert runs == ["short", "long", "short", "long", "short"]


@pytest.mark.slow
def test_optimize_with_inductor_on_a_tiny_model() -> None:
    torch.manual_seed(0)
    model = _tiny_conv_net()
    x = torch.randn(2, 3, 16, 16)
    fast = optimize(model, x, backend="inductor")
    report = fast.report
    if report.backend != "inductor":  # e.g. no C++ compiler: the reason must be stated
        assert any("inductor not used" in n for n in report.notes), report.notes
        pytest.skip(f"inductor unavailable here: {report.notes}")
    assert any(k.startswith("inductor+folded") for k in report.timings_ms)
    with torch.no_grad():
        expected = model(x)
    assert (fast(x) - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()


def _tiny_conv_net() -> nn.Module:
    return _randomize_batchnorms(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 4),
        )
    )


def test_optimize_with_onnxruntime_falls_back_to_eager_for_other_shapes() -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = _tiny_conv_net()
    x = torch.randn(2, 3, 16, 16)
    fast = optimize(model, x, backend="onnxruntime", channels_last=True)
    assert fast.report.backend == "onnxruntime", fast.report.notes
    other = torch.randn(5, 3, 20, 20)  # not the session's shape: runs the folded eager module
    with torch.no_grad():
        for inp in (x, other):
            expected = model(inp)
            assert (fast(inp) - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()


# --- export -----------------------------------------------------------------------------------


def _run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """The exit status of `cnnzoo ARGV` (argparse's own errors exit through SystemExit)."""
    modules = cli_main.COMMAND_MODULES
    if "cnnzoo.cli.export_cmd" not in modules:
        monkeypatch.setattr(cli_main, "COMMAND_MODULES", (*modules, "cnnzoo.cli.export_cmd"))
    try:
        return cli_main.main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _onnx_is_declared() -> bool:
    text = (ROOT / "pyproject.toml").read_text()
    return "onnxruntime" in text and "onnxscript" in text


@pytest.mark.parametrize(
    ("fmt", "suffix"), [("torchscript", ".pt"), ("exported-program", ".pt2"), ("onnx", ".onnx")]
)
def test_export_round_trips_with_matching_outputs(
    fmt: str, suffix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    needed = ["onnx", "onnxscript", "onnxruntime"] if fmt == "onnx" else []
    missing = [p for p in needed if importlib.util.find_spec(p) is None]
    if missing and not (os.environ.get("CI") == "true" and _onnx_is_declared()):
        pytest.skip(f"ONNX export needs {', '.join(missing)}")
    out = tmp_path / f"resnet18{suffix}"
    argv = ["export", "resnet18", str(out), "--format", fmt, "--input-size", "3x32x32"]
    assert _run_cli([*argv, "--num-classes", "7"], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "max |exported - eager|" in printed and "dynamic batch" in printed

    # Load the file independently and run it at another batch size than the example's 2.
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32)
    if fmt == "torchscript":
        got = torch.jit.load(str(out))(x)
    elif fmt == "exported-program":
        got = torch.export.load(str(out)).module()(x)
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert got.shape == (3, 7)


def test_export_module_compares_against_eager_with_the_same_weights(tmp_path: Path) -> None:
    model = cnnzoo.create_model("lenet5", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    result = export_module.export_model(model, tmp_path / "lenet.pt2", "exported-program", x)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-6
    loaded = torch.export.load(str(tmp_path / "lenet.pt2")).module()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.allclose(loaded(x), reference(x), atol=1e-6)


def test_export_command_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = str(tmp_path / "m.onnx")
    cases = [
        (["export", "resnet18", out, "--format", "tflite"], 2, "invalid choice: 'tflite'"),
        (["export", "resnet19", out, "--format", "torchscript"], 2, "unknown model 'resnet19'"),
        (
            ["export", "resnet18", out, "--format", "torchscript", "--input-size", "3xbig"],
            2,
            "--input-size",
        ),
        (
            ["export", "lenet5", out, "--format", "torchscript", "--input-size", "3x8x8"],
            2,
            "at least 28x28",
        ),
        (["export", str(tmp_path / "no-run"), out, "--format", "torchscript"], 1, "no such run"),
    ]
    for argv, status, text in cases:
        code = _run_cli(argv, monkeypatch)
        err = capsys.readouterr().err
        assert code == status, (argv, err)
        assert text in err and err.count("\n") == 1, err


def test_onnx_export_names_the_missing_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(export_module, "missing_onnx_packages", lambda: ["onnxscript"])
    argv = ["export", "lenet5", str(tmp_path / "l.onnx"), "--format", "onnx"]
    assert _run_cli(argv, monkeypatch) == 1
    assert "pip install onnxscript" in capsys.readouterr().err
    assert not (tmp_path / "l.onnx").exists()
