"""`cnnzoo models`, `cnnzoo summary` and `cnnzoo verify` through the real entry point."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from cnnzoo.analysis import zoo_table
from cnnzoo.cli.main import main
from cnnzoo.cli.options import parse_input_size
from cnnzoo.errors import UsageError
from cnnzoo.reference import Figure, Reference


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_lists_matching_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "models", "lenet*")
    assert code == 0 and err == ""
    assert "lenet5" in out and "lenet_caffe" in out and "resnet18" not in out
    assert "2 models" in out
    code, out, _ = run(capsys, "models", "net_b0")  # no wildcard: a substring
    assert code == 0 and "efficientnet_b0" in out and out.splitlines()[0].strip() == "1 model"


def test_python_dash_m_cnnzoo_is_the_command_line() -> None:
    """`python -m cnnzoo` (what `torchrun -m cnnzoo` runs) behaves like the `cnnzoo` script."""
    done = subprocess.run(
        [sys.executable, "-m", "cnnzoo", "models", "lenet5"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "lenet5" in done.stdout and "1 model" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "cnnzoo", "models", "--family", "nope"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "unknown family 'nope'" in done.stderr


def test_models_figures_are_cached_until_the_code_changes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path))
    computed: list[str] = []
    real_compute = zoo_table.compute_figures

    def counting(name: str) -> zoo_table.ModelFigures:
        computed.append(name)
        return real_compute(name)

    monkeypatch.setattr(zoo_table, "compute_figures", counting)
    code, first, _ = run(capsys, "models", "lenet*", "--no-progress")
    assert code == 0 and computed == ["lenet5", "lenet_caffe"]
    stored = json.loads((tmp_path / "tables" / "models.json").read_text())
    assert stored["lenet5"]["figures"]["params"] == 61_706

    code, second, _ = run(capsys, "models", "lenet*", "--no-progress")  # from the cache
    assert code == 0 and second == first and len(computed) == 2

    monkeypatch.setattr(zoo_table, "figures_key", lambda name: "code changed")
    code, third, _ = run(capsys, "models", "lenet5", "--no-progress")
    assert code == 0 and computed[2:] == ["lenet5"] and third.splitlines()[0].strip() == "1 model"


def test_models_works_when_the_cache_cannot_be_written(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CNNZOO_CACHE", str(blocker))
    code, out, err = run(capsys, "models", "lenet5", "--no-progress")
    assert code == 0 and "0.06 M" in out and err == ""


def test_models_by_family_with_figures(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "resnet1*", "--family", "resnet")
    assert code == 0
    row = next(line for line in out.splitlines() if " resnet18 " in line)
    assert "11.69 M" in row and "1.814" in row and "224" in row and "69.76" in row
    assert "resnet101" in out and "resnet110" not in out  # resnet110 is family resnet_cifar


def test_models_unknown_family_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "models", "--family", "transformers")
    assert code == 2 and "unknown family 'transformers'" in err and "resnet" in err


def test_summary_prints_table_and_totals(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "summary", "lenet5", "--input-size", "1x32x32", "--num-classes", "10"
    )
    assert code == 0
    assert "Total params" in out and "61,706" in out
    assert "[1, 6, 28, 28]" in out and "Conv2d" in out


def test_summary_small_input_and_depth(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "summary", "resnet18", "--small-input", "--input-size", "32", "--depth", "1",
        "--num-classes", "10",
    )  # fmt: skip
    assert code == 0
    assert "[1, 64, 32, 32]" in out  # the 3x3/1 stem keeps 32 px
    assert "BasicBlock" not in out  # depth 1 hides the blocks
    assert "11,173,962" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["summary", "resnt18"], "did you mean resnet18"),
        (["summary", "resnet18", "--input-size", "3x2a"], "--input-size must be"),
        (["summary", "resnet18", "--input-size", "1x32x32", "--in-chans", "3"], "disagrees"),
        (["summary", "lenet5", "--small-input"], "no small-input variant"),
        (["summary", "resnet18", "--input-size", "0x5"], "--input-size must be"),
        (["verify", "no_such_net"], "unknown model 'no_such_net'"),
    ],
)
def test_usage_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert needle in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_input_size_formats() -> None:
    assert parse_input_size("1x28x28") == (1, 28, 28)
    assert parse_input_size("28") == (28, 28)
    assert parse_input_size("64x48") == (64, 48)
    with pytest.raises(UsageError):
        parse_input_size("1x2x3x4")


def test_verify_small_models_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "verify", "lenet5", "resnet20", "mobilenet_v3_small", "--no-progress"
    )
    assert code == 0
    assert "3 models verified: all ok" in out
    assert "61,706" in out and "269,722" in out and "2,542,856" in out


def test_verify_exits_1_on_a_mismatch(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    verify_mod = importlib.import_module("cnnzoo.analysis.verify")
    wrong = Reference("lenet5", params=(Figure(60_000, source="LeCun 1998", in_chans=1),))
    monkeypatch.setattr(verify_mod, "reference", lambda name: wrong)
    code, out, _ = run(capsys, "verify", "lenet5", "--no-progress")
    assert code == 1
    assert "MISMATCH" in out and "1 failed (lenet5)" in out


def test_models_measure_times_caches_sorts_and_picks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from cnnzoo.analysis import latency

    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path))
    args = ("models", "lenet*", "--measure", "--backend", "eager", "--no-progress")
    code, out, err = run(capsys, *args, "--sort", "latency")
    assert code == 0, err
    stored = json.loads((tmp_path / "tables" / "latency.json").read_text())
    figures = {name: next(iter(stored[name].values())) for name in ("lenet5", "lenet_caffe")}
    assert all(f["eager_ms"] > 0 and f["optimized_ms"] > 0 for f in figures.values())
    assert figures["lenet5"]["input_size"] == [1, 32, 32] and figures["lenet5"]["batch"] == 1
    order = sorted(figures, key=lambda n: figures[n]["optimized_ms"])
    assert out.index(order[0]) < out.index(order[1])  # --sort latency
    # The guide's picks come from the measured table.
    lines = out.splitlines()
    fastest = next(line for line in lines if "fast inference" in line)
    assert order[0] in fastest and f"{figures[order[0]]['optimized_ms']:.2f} ms" in fastest
    assert "lenet5" in next(line for line in lines if "memory limited" in line)
    assert any("learning" in line for line in lines)

    def no_timing(*_: object) -> None:
        raise AssertionError("measured again although the cache holds the figures")

    monkeypatch.setattr(latency, "measure_latency", no_timing)
    code, again, _ = run(capsys, *args, "--sort", "params")
    assert code == 0 and again.index("lenet5") < again.index("lenet_caffe")
    assert f"{figures['lenet5']['eager_ms']:.2f}" in again
    # Another size is another measurement: LeNet-5 cannot take 16 px, and says so.
    monkeypatch.undo()
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path))
    code, small, _ = run(capsys, "models", "lenet5", "--measure", "--backend", "eager",
                         "--input-size", "1x16x16", "--no-progress")  # fmt: skip
    assert code == 0 and "needs inputs of at least 28x28" in " ".join(small.split())


def test_models_sort_and_measure_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "resnet[15]*", "--sort", "top1", "--no-progress")
    assert code == 0
    assert out.index("resnet152") < out.index("resnet50") < out.index("resnet18")
    for argv, fragment in ((["--sort", "latency"], "--sort latency needs --measure"),
                           (["--batch", "4"], "settings of --measure")):
        code, _, err = run(capsys, "models", "lenet5", *argv)
        assert code == 2 and fragment in err and err.count("\n") == 1


def test_guide_picks_follow_the_measured_figures() -> None:
    from cnnzoo.analysis.latency import Latency, guide_picks

    def lat(eager: float, optimized: float) -> Latency:
        return Latency(1, (3, 224, 224), 2, eager, optimized, "onnxruntime", 1)

    latencies = {"resnet18": lat(30.0, 20.0), "mobilenet_v3_small": lat(9.0, 4.0),
                 "efficientnet_b4": lat(200.0, 90.0), "vgg16": lat(250.0, 180.0),
                 "alexnet": Latency(1, (3, 8, 8), error="too small")}  # fmt: skip
    params = {"resnet18": 11_689_512, "mobilenet_v3_small": 2_542_856,
              "efficientnet_b4": 19_341_616, "vgg16": 138_357_544, "alexnet": 61_100_840}
    picks = {pick.need: pick.model for pick in guide_picks(latencies, params)}
    assert picks == {"fast inference": "mobilenet_v3_small", "memory limited": "mobilenet_v3_small",
                     "high accuracy": "efficientnet_b4", "learning": "resnet18"}
