"""Receptive fields: the published figures, and the extent measured from input gradients.

cnnzoo computes fields from the layers' geometry (kernels, strides, padding, dilation, branch
unions). Two independent checks: the figures in NUMBERS.md (AlexNet pool5 195 px, VGG-16
conv5_3 196 px and pool5 212 px), and, for a model of every family, the input pixels that one
central output unit really depends on, read off the gradient of that unit w.r.t. the input.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnzoo.analysis.receptive_field import ReceptiveFieldError, receptive_field
from cnnzoo.analysis.summary import summary
from cnnzoo.models.base import ZooModel
from cnnzoo.models.features import FeatureInfo
from cnnzoo.registry import create_model, get_entry, list_models


def meta(name: str, **kwargs: object) -> ZooModel:
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.mark.parametrize(
    ("name", "module", "size"),
    [
        ("alexnet", "features.12", 195),  # pool5
        ("alexnet_v1", "features.14", 195),  # pool5 of the paper's layout: same geometry
        ("vgg16", "features.29", 196),  # conv5_3 (after its ReLU)
        ("vgg16", "features.30", 212),  # pool5
        ("vgg16_bn", "features.43", 212),  # pool5: batch norm changes nothing
    ],
)
def test_published_receptive_fields(name: str, module: str, size: int) -> None:
    layer = receptive_field(meta(name))[module]
    assert layer.size == (size, size)


def test_vgg16_jumps_double_at_each_pool() -> None:
    rf = receptive_field(meta("vgg16"))
    assert [rf[stage.module].jump for stage in rf_stages("vgg16")] == [
        (float(j), float(j)) for j in (1, 2, 4, 8, 16, 32)
    ]
    # Two stacked 3x3 convolutions see 5x5, three see 7x7 (the paper's argument for 3x3s).
    assert rf["features.2"].size == (5, 5) and rf["features.3"].size == (5, 5)


def rf_stages(name: str) -> FeatureInfo:
    return meta(name).feature_info


@pytest.mark.parametrize("name", list_models())
def test_stage_reduction_is_the_jump(name: str) -> None:
    model = meta(name)
    rf = receptive_field(model)
    for stage in model.feature_info:
        layer = rf[stage.module]
        assert layer.jump == (stage.reduction, stage.reduction), f"{name}: {stage.module}"
    assert rf.total is not None and rf.total.name == model.feature_info[-1].module


# --- the gradient measurement -------------------------------------------------------------

IDENTITY_OPS = {
    "relu",
    "relu_",
    "relu6",
    "hardtanh",
    "silu",
    "hardswish",
    "sigmoid",
    "hardsigmoid",
    "local_response_norm",
}


class Linearised(TorchFunctionMode):
    """Run a model as a linear network with the same geometry.

    Activations and LRN become the identity (no ReLU dead zones, no saturating ReLU6 or
    hard-sigmoid), and every max-pool becomes an average pool of the same kernel, stride,
    padding and ceil mode (a max-pool passes the gradient to one input of its window only).
    ``local_only`` detaches global average pools (squeeze-excitation), to measure the field of
    the convolution paths alone.
    """

    def __init__(self, local_only: bool = False) -> None:
        super().__init__()
        self.local_only = local_only

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in IDENTITY_OPS:
            return args[0]
        if name in ("max_pool2d", "_max_pool2d"):
            names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
            params = dict(zip(names, args[1:], strict=False))
            params.update(kwargs)
            assert params.get("dilation", 1) in (1, (1, 1))
            return F.avg_pool2d(
                args[0],
                params["kernel_size"],
                params.get("stride") or params["kernel_size"],
                params.get("padding", 0),
                ceil_mode=params.get("ceil_mode", False),
            )
        out = func(*args, **kwargs)
        if self.local_only and name == "adaptive_avg_pool2d" and out.shape[-2:] == (1, 1):
            return out.detach()
        return out


def averaging_copy(name: str) -> ZooModel:
    """The model with every convolution an average of its inputs (all weights 1/fan-in, no
    bias) and batch norm the identity: positive paths only, so no gradient cancels.

    Families with layer norms (ConvNeXt, ViT) keep random weights instead: on the equal
    channels of an averaging network a layer norm's output, and its gradient, would be zero.
    """
    if get_entry(name).family in ("convnext", "vit"):
        torch.manual_seed(0)
        return create_model(name).eval()
    model = meta(name).to_empty(device="cpu").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
    return model


def measured_extent(
    model: nn.Module, module: str, side: int, local_only: bool = True
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(rows, cols) of input pixels with a non-zero gradient of the central unit of ``module``'s
    output (summed over channels), and that unit's (row, col)."""
    # Positive input: a squeeze-excitation product x * gate passes a gradient to x only
    # where the gate is non-zero, and the gate is computed from x.
    x = torch.ones(1, model.get_submodule(model.first_conv).in_channels, side, side)
    x.requires_grad_(True)
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(module).register_forward_hook(
        lambda _m, _i, out: captured.append(out)
    )
    try:
        with Linearised(local_only):
            model.forward_features(x)
    finally:
        handle.remove()
    out = captured[0]
    unit = (out.shape[-2] // 2, out.shape[-1] // 2)
    out[0, :, unit[0], unit[1]].sum().backward()
    grad = x.grad[0].abs().sum(0)
    rows = torch.nonzero(grad.sum(1)).flatten()
    cols = torch.nonzero(grad.sum(0)).flatten()
    return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1])), unit


# One model per family, the layer measured and an input side big enough that the central unit's
# field lies inside the image (so zero padding clips nothing; asserted below). The deepest maps
# of the ImageNet models see 400-1300 px and would need inputs that size, too slow for a CPU
# test suite; a stage that already spans the family's distinctive blocks is measured instead.
GRADIENT_CASES = [
    ("lenet5", "relu2", 32),
    ("lenet_caffe", "pool2", 28),
    ("alexnet", "features.12", 256),
    ("alexnet_v1", "features.14", 256),
    ("vgg11", "features.20", 192),  # pool5
    ("googlenet", "inception4e", 272),  # inception modules, ceil-mode pools
    ("inception_v3", "Mixed_6b", 400),  # InceptionA x3, the grid reduction, 1x7/7x1 factors
    ("resnet18", "layer3", 256),
    ("resnext50_32x4d", "layer2", 112),
    ("wide_resnet50_2", "layer2", 112),
    ("se_resnet18", "layer2", 128),
    ("preact_resnet18", "layer2", 128),
    ("resnet20", "layer3", 96),  # option-A shortcuts: strided slicing and zero channels
    ("wrn16_8", "layer2", 32),  # pre-activation blocks, 1x1 projection shortcuts
    ("efficientnet_b0", "features.4", 192),
    ("mobilenet_v2", "features.10", 224),
    ("mobilenet_v3_small", "features.6", 224),
    ("shufflenet_v2_x0_5", "stage3", 352),
    ("convnext_cifar", "features.3", 128),  # 2x2 stem, 7x7 depthwise, channels-last MLPs
    ("vit_cifar_4", "conv_proj", 32),  # the patch embedding (attention: see test_vit.py)
]


def test_gradient_cases_cover_every_family() -> None:
    families = {get_entry(name).family for name in list_models()}
    assert {get_entry(name).family for name, _, _ in GRADIENT_CASES} == families


@pytest.mark.parametrize(("name", "module", "side"), GRADIENT_CASES)
def test_field_equals_gradient_extent(name: str, module: str, side: int) -> None:
    """The field of the central unit, as cnnzoo computes it, against the measured one.

    The measurement runs on a copy of the model that keeps its geometry but is linear with
    positive weights (see :class:`Linearised` and :func:`averaging_copy`), so every input
    pixel on some path to the unit gets a strictly positive gradient and every other pixel
    exactly zero. Squeeze-excitation's global pools are detached there: that measures the
    local field, which cnnzoo reports beside its global-context flag (checked below).
    """
    model = averaging_copy(name)
    layer = receptive_field(model, (side, side))[module]
    rows, cols, unit = measured_extent(model, module, side)
    for (first, last), axis, u in zip((rows, cols), layer.field.axes, unit, strict=True):
        assert 0 < first and last < side - 1, "the field touches the border: use a bigger side"
        assert (first, last) == (axis.lo + u * axis.jump, axis.hi + u * axis.jump)
    assert layer.size == (rows[1] - rows[0] + 1, cols[1] - cols[0] + 1)


@pytest.mark.parametrize(
    ("name", "module", "side", "global_context"),
    [
        ("se_resnet18", "layer2", 128, True),
        ("efficientnet_b0", "features.3", 96, True),
        ("mobilenet_v3_small", "features.1", 96, True),  # its first block has SE
        ("mobilenet_v2", "features.6", 96, False),
        ("resnet18", "layer2", 128, False),
    ],
)
def test_global_context_flag_matches_gradient(
    name: str, module: str, side: int, global_context: bool
) -> None:
    """With the global pools left in, the gradient reaches every pixel exactly when cnnzoo
    flags the layer as seeing global context."""
    model = averaging_copy(name)
    layer = receptive_field(model, (side, side))[module]
    rows, cols, _ = measured_extent(model, module, side, local_only=False)
    whole = rows == (0, side - 1) and cols == (0, side - 1)
    assert layer.global_context is global_context
    assert whole is global_context


# --- rules on small hand-made nets ---------------------------------------------------------


class TwoBranches(nn.Module):
    """A 3x3 branch and a dilated, offset 3x3 branch (5x5 reach, unpadded) merged two ways."""

    def __init__(self) -> None:
        super().__init__()
        self.first_conv = "stem"
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.small = nn.Conv2d(2, 2, 3, padding=1)
        self.dilated = nn.Conv2d(2, 2, 3, padding=2, dilation=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        merged = torch.cat([self.small(x), self.dilated(x)], 1) + x.repeat(1, 2, 1, 1)
        return self.pool(merged)

    forward = forward_features


def test_dilation_and_branch_union_by_hand() -> None:
    model = TwoBranches()
    rf = receptive_field(model, (1, 16, 16))
    assert rf["small"].size == (5, 5)  # 3 + 2
    assert rf["dilated"].size == (7, 7)  # 3 + (2*(3-1)+1 - 1)
    assert rf["pool"].size == (9, 9) and rf["pool"].jump == (2, 2)  # max over paths, then 3/2
    for module in ("dilated", "pool"):
        nn.init.constant_(model.stem.weight, 0.5)
        for conv in (model.small, model.dilated):
            nn.init.constant_(conv.weight, 0.5)
        rows, cols, unit = measured_extent(model, module, 16)
        axis = rf[module].field.axes[0]
        assert rows == (axis.lo + unit[0] * axis.jump, axis.hi + unit[0] * axis.jump)


def test_unsupported_op_is_an_error() -> None:
    class Upsampler(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, scale_factor=2.0)

    with pytest.raises(ReceptiveFieldError, match="interpolate"):
        receptive_field(Upsampler(), (1, 8, 8))


def test_asymmetric_kernels_report_both_sides() -> None:
    rf = receptive_field(meta("inception_v3"))
    branch = rf["Mixed_6b.branch7x7_2"]  # 1x7 after a 1x1: wider than tall
    height, width = branch.size
    assert width - height == 6 * 16
    assert rf["Mixed_6b"].size[0] == rf["Mixed_6b"].size[1]
    assert "x" in branch.size_text


def test_summary_shows_fields_and_totals() -> None:
    result = summary(meta("vgg16"))
    rows = {row.name: row for row in result.rows}
    assert (rows["features.29"].rf_text, rows["features.30"].rf_text) == ("196", "212")
    assert rows["features.30"].jump_text == "32" and rows["classifier.6"].rf_text == "global"
    text = str(result)
    assert re.search(r"\bRF\b.*\bJump\b", text)
    assert re.search(r"Receptive field \(features\.30\) +212 px", text)
    assert re.search(r"Effective stride \(jump\) +32 px", text)
    se = str(summary(meta("se_resnet18"), (3, 64, 64)))
    assert "*" in se and "global pooling" in se
