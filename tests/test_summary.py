"""Multiply-add counting, the model summary, the reference figures and `verify`."""

from __future__ import annotations

import importlib
import io

import pytest
import torch
from rich.console import Console
from torch import nn

from cnnzoo.analysis.flops import count_macs, profile_macs
from cnnzoo.analysis.summary import summary
from cnnzoo.analysis.verify import MISMATCH, NA, OK, verify, verify_table
from cnnzoo.models.base import ZooModel
from cnnzoo.reference import REFERENCES, Figure, Reference, reference
from cnnzoo.registry import create_model

verify_mod = importlib.import_module("cnnzoo.analysis.verify")  # the package exports verify()


class Tiny(ZooModel):
    """conv(1->4, 3x3, pad 1) -> BN -> ReLU -> 2x2 pool -> a shared 4->4 1x1 conv twice -> fc."""

    first_conv = "stem"
    classifier_name = "fc"

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.mix = nn.Conv2d(4, 4, 1, bias=False)
        self.body = nn.Sequential(self.mix, nn.ReLU())
        self.fc = nn.Linear(4, num_classes)
        self.num_features, self.num_classes = 4, num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.body(self.pool(self.act(self.bn(self.stem(x))))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)


def meta(name: str, **kwargs) -> ZooModel:
    with torch.device("meta"):
        return create_model(name, **kwargs)


# --- multiply-adds ----------------------------------------------------------------------------


def test_tiny_macs_by_hand() -> None:
    model = Tiny()
    counted = profile_macs(model, (1, 8, 8))
    stem = 4 * 1 * 9 * 8 * 8  # out channels x in channels x kernel x output pixels
    mix = 4 * 4 * 4 * 4  # 1x1 conv on the pooled 4x4 map, run twice (shared)
    fc = 4 * 3
    assert counted.by_module["stem"] == stem == 2304
    assert counted.by_module["mix"] == 2 * mix
    assert counted.by_module["body"] == mix
    assert counted.by_module["fc"] == fc
    assert counted.total == counted.by_module[""] == stem + 2 * mix + fc


@pytest.mark.parametrize(
    ("name", "gmacs", "side"),
    [("resnet18", 1.814, 224), ("resnet50", 4.089, 224), ("mobilenet_v3_small", 0.057, 224)],
)
def test_macs_match_torchvision_figures(name: str, gmacs: float, side: int) -> None:
    assert count_macs(meta(name), (3, side, side)) / 1e9 == pytest.approx(gmacs, abs=0.001)


def test_efficientnet_b7_counts_on_meta_at_600() -> None:
    # 37.746 G at 600 px (NUMBERS.md); on meta this allocates nothing.
    assert count_macs(meta("efficientnet_b7")) / 1e9 == pytest.approx(37.746, abs=0.001)


def test_counting_leaves_a_real_model_alone() -> None:
    model = create_model("resnet20", num_classes=10)
    model.train()
    model.layer1.eval()  # a mixed state must come back exactly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    macs_meta = count_macs(model, 32)
    macs_cpu = count_macs(model, torch.randn(4, 3, 32, 32), device="cpu")
    assert macs_meta == macs_cpu
    # By hand: the 3->16 stem, then 6 3x3 convs per stage (16 ch at 32 px, 32 at 16, 64 at 8;
    # the first of stages 2-3 halves the side) and the 64->10 classifier.
    by_hand = 16 * 3 * 9 * 32 * 32 + 6 * 16 * 16 * 9 * 32 * 32
    by_hand += (32 * 16 + 5 * 32 * 32) * 9 * 16 * 16 + (64 * 32 + 5 * 64 * 64) * 9 * 8 * 8
    assert macs_meta == by_hand + 64 * 10 == 40_551_040
    assert model.training and not model.layer1.training and model.layer2.training
    assert next(model.parameters()).device.type == "cpu"
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_meta_model_can_be_counted_on_cpu() -> None:
    model = meta("resnet20", num_classes=10)
    assert count_macs(model, 32, device="cpu") == count_macs(model, 32) == 40_551_040
    assert summary(model, (3, 32, 32), device="cpu").rows[1].output_shapes == ((1, 16, 32, 32),)
    assert next(model.parameters()).is_meta


# --- summary ------------------------------------------------------------------------------------


def test_tiny_summary_rows_and_totals() -> None:
    model = Tiny()
    model.fc.weight.requires_grad_(False)
    before = [(name, p, p.detach().clone()) for name, p in model.named_parameters()]
    result = summary(model, (1, 8, 8))
    # The pass ran on meta stand-ins; the shared layer got its own real tensors back.
    after = dict(model.named_parameters())
    for name, param, value in before:
        assert after[name] is param and torch.equal(param, value), name
    assert model.body[0].weight is model.mix.weight
    rows = {row.name: row for row in result.rows}
    assert rows["stem"].output_shapes == ((1, 4, 8, 8),)
    assert rows["pool"].output_shapes == ((1, 4, 4, 4),)
    assert rows["fc"].output_shapes == ((1, 3),)
    assert rows[""].output_shapes == ((1, 3),)
    assert rows["stem"].params == 4 * 9 + 4
    assert rows["body"].params == rows["mix"].params == 16
    assert rows["stem"].macs == 2304 and rows["fc"].macs == 12
    # The shared conv appears under two names but counts once in the totals.
    assert result.total_params == sum(p.numel() for p in model.parameters()) == 40 + 8 + 16 + 15
    assert result.non_trainable_params == 12 and result.trainable_params == 67
    assert result.total_macs == 2304 + 2 * 256 + 12
    # Leaf outputs in float32: stem, bn, act (4x8x8 each), pool, mix twice and body's ReLU
    # (4x4x4 each), fc (3).
    assert result.activation_bytes == 4 * (3 * 256 + 4 * 64 + 3)
    assert result.param_bytes == 4 * 79


def test_lenet5_summary_text() -> None:
    model = create_model("lenet5", num_classes=10, in_chans=1)
    result = summary(model)
    assert result.input_size == (1, 32, 32)
    assert result.total_params == sum(p.numel() for p in model.parameters()) == 61_706
    text = str(result)
    assert "Total params" in text and "61,706" in text
    assert "[1, 6, 28, 28]" in text  # C1: 6 feature maps of 28x28
    assert 0 < result.activation_mb < 1
    console = Console(record=True, width=140, file=io.StringIO())
    console.print(result)
    assert "61,706" in console.export_text()


def test_summary_resnet18_depth_and_totals_on_meta() -> None:
    model = meta("resnet18")
    result = summary(model, (3, 224, 224), depth=1)
    assert result.total_params == 11_689_512
    assert result.total_macs / 1e9 == pytest.approx(1.814, abs=0.001)
    visible = result.visible_rows()
    assert [row.name for row in visible][:3] == ["", "conv1", "bn1"]
    assert all(row.depth <= 1 for row in visible)
    assert len(result.rows) > len(visible)
    layer4 = next(row for row in visible if row.name == "layer4")
    assert layer4.output_shapes == ((1, 512, 7, 7),)
    # Activations of resnet18 at 224 px, batch 1: tens of MB, not KB or GB.
    assert 10 < result.activation_mb < 100


def test_summary_of_a_model_returning_tuples_in_train_mode() -> None:
    model = meta("googlenet", num_classes=10)  # aux heads: a tuple of outputs in train mode
    model.train()
    result = summary(model, (3, 224, 224))
    assert model.training
    assert result.output_shapes == ((1, 10),)
    aux = next(row for row in result.rows if row.name == "aux1")
    assert aux.output_shapes == () and aux.params > 0  # not run in eval mode


# --- reference figures and verify ---------------------------------------------------------------


def test_reference_figures_and_tolerances() -> None:
    resnet20 = reference("resnet20")
    assert resnet20 is not None
    exact, paper = resnet20.params
    assert exact.value == 269_722 and exact.num_classes == 10 and exact.tolerance == 0
    assert paper.value == pytest.approx(0.27e6) and paper.tolerance == pytest.approx(5e3)
    assert paper.holds(269_722) and not paper.holds(276_000)
    b2 = {f.input_size: f for f in REFERENCES["efficientnet_b2"].macs}
    assert b2[260].tolerance == pytest.approx(0.05e9)  # "1.0" B, not "1"
    assert REFERENCES["resnet50"].crop == 224 and REFERENCES["resnet50"].top1 == 80.858
    assert REFERENCES["lenet5"].params[0].in_chans == 1
    assert reference("no_such_model") is None


def test_verify_small_models() -> None:
    rows = {row.name: row for row in verify(["lenet5", "resnet20", "shufflenet_v2_x0_5"])}
    assert rows["lenet5"].params == 61_706 and rows["lenet5"].params_status == OK
    assert rows["lenet5"].torchvision_status == NA
    assert rows["resnet20"].params == 269_722 and rows["resnet20"].ok
    shuffle = rows["shufflenet_v2_x0_5"]
    assert shuffle.params == 1_366_792 and shuffle.macs_status == OK
    assert shuffle.torchvision_status == OK and shuffle.max_abs_diff <= 1e-5
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(verify_table(list(rows.values())))
    assert "shufflenet_v2_x0_5" in console.export_text()


def test_verify_reports_a_wrong_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = Reference(
        "resnet20", params=(Figure(269_000, source="made up", num_classes=10),), macs=()
    )
    monkeypatch.setattr(verify_mod, "reference", lambda name: wrong)
    (row,) = verify(["resnet20"], progress=False)
    assert row.params_status == MISMATCH and not row.ok
    assert any("made up" in note for note in row.notes)


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "mobilenet_v3_small"])
def test_every_classifier_layer_has_its_macs_and_shape(name: str) -> None:
    """The notes' point about VGG: where its cost and parameters sit, the dense layers included."""
    result = summary(meta(name))
    rows = {row.name: row for row in result.rows}
    linears = [row for row in result.rows if row.type == "Linear"]
    assert len(linears) >= 2
    for row in linears:
        module = meta(name).get_submodule(row.name)
        assert row.macs == module.in_features * module.out_features, row.name
        assert row.output_shapes == ((1, module.out_features),)
    classifier = rows["classifier"]
    assert classifier.output_shapes == ((1, 1000),)
    assert classifier.macs == sum(row.macs for row in linears)
    assert sum(row.macs for row in result.rows if row.depth == 1) == result.total_macs


@pytest.mark.slow
def test_every_zoo_layer_that_runs_has_its_macs_and_shape() -> None:
    from cnnzoo.registry import list_models

    for name in list_models():
        rows = summary(meta(name)).rows
        # Auxiliary classifiers run in training only; everything else runs in eval mode, except
        # nn.MultiheadAttention's out_proj, whose weights torch applies without calling it (its
        # multiply-adds are counted in the attention's row).
        ran = [row for row in rows if "aux" not in row.name.lower()
               and not row.name.endswith("self_attention.out_proj")]  # fmt: skip
        assert all(row.output_shapes for row in ran if row.params), name
        assert all(row.macs for row in ran if row.type in ("Conv2d", "Linear")), name
