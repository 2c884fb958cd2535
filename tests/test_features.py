"""features_only backbones and feature_info, for every model in the zoo.

Shapes are checked on the meta device (no memory, no arithmetic) at each model's default and
minimum input sizes, against sizes derived here from the layers' own arithmetic. Values are
checked with real tensors against an independent oracle: forward hooks on the named modules of
the full model. The backbone is a torch.fx graph cut after the last stage, so the hooks and the
graph are two different ways of getting the maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from cnnzoo.analysis.flops import _MetaShortcuts
from cnnzoo.models.features import FeatureInfo, FeatureNet, feature_extractor, tokens_to_map
from cnnzoo.registry import count_params, create_model, get_entry, list_models

ALL_MODELS = list_models()


def _conv(side: int, kernel: int, stride: int = 1, padding: int = 0, ceil: bool = False) -> int:
    span = side + 2 * padding - kernel
    return (-(-span // stride) if ceil else span // stride) + 1


def _alexnet(side: int, padding: int) -> list[int]:
    conv1 = _conv(side, 11, 4, padding)
    pool1 = _conv(conv1, 3, 2)
    pool2 = _conv(pool1, 3, 2)
    return [conv1, pool1, pool2, _conv(pool2, 3, 2)]


def _googlenet(side: int) -> list[int]:
    conv1 = _conv(side, 7, 2, 3)
    conv3 = _conv(conv1, 3, 2, ceil=True)
    inception3 = _conv(conv3, 3, 2, ceil=True)
    inception4 = _conv(inception3, 3, 2, ceil=True)
    return [conv1, conv3, inception3, inception4, _conv(inception4, 2, 2, ceil=True)]


def _inception_v3(side: int) -> list[int]:
    conv2b = _conv(_conv(side, 3, 2), 3)  # 1a: 3x3/2, 2a: 3x3, 2b: 3x3 padded
    conv4a = _conv(_conv(conv2b, 3, 2), 3)  # max-pool 3x3/2, 3b: 1x1, 4a: 3x3
    mixed5 = _conv(conv4a, 3, 2)  # max-pool 3x3/2, then padded modules
    mixed6 = _conv(mixed5, 3, 2)  # Mixed_6a: unpadded 3x3/2 branches
    return [conv2b, conv4a, mixed5, mixed6, _conv(mixed6, 3, 2)]


# Side of each stage's map for an input side, from each family's layer arithmetic. Families whose
# layers all pad "same" halve with ceil at every stride, so a stage of reduction r is ceil(side/r).
VALID_PADDING_SIDES: dict[str, Callable[[int], list[int]]] = {
    "alexnet": lambda side: _alexnet(side, padding=2),
    "alexnet_v1": lambda side: _alexnet(side, padding=0),
    "googlenet": _googlenet,
    "inception_v3": _inception_v3,
    "lenet5": lambda side: [14, 5],  # 28..32 px are centred in 32x32 first
    "lenet_caffe": lambda side: [12, 4],  # 28 px: conv5 24, pool 12, conv5 8, pool 4
}


def expected_sides(name: str, info: FeatureInfo, side: int) -> list[int]:
    if name in VALID_PADDING_SIDES:
        return VALID_PADDING_SIDES[name](side)
    if get_entry(name).family == "vgg":  # 2x2/2 max-pools floor, 3x3 convs keep the size
        return [side // reduction for reduction in info.reduction()]
    return [math.ceil(side / reduction) for reduction in info.reduction()]


def meta_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return create_model(name).eval()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_feature_shapes_at_default_and_minimum_size(name: str) -> None:
    model = meta_model(name)
    info = model.feature_info
    assert isinstance(info, FeatureInfo) and len(info) >= 2
    reductions = info.reduction()
    assert reductions == sorted(reductions) and reductions[0] >= 1
    backbone = feature_extractor(model)
    channels = model.default_cfg["input_size"][0]
    sides = {model.default_cfg["input_size"][-1], model.min_input_size}
    for side in sides:
        # cnnzoo's meta shortcut for batch norm (shape only), as summary and count_macs use:
        # torch's meta batch norm is a slow Python decomposition (ResNet-1202: seconds).
        with _MetaShortcuts():
            maps = backbone(torch.empty(1, channels, side, side, device="meta"))
        assert [m.shape[1] for m in maps] == info.channels(), f"{name} at {side} px"
        spatial = [tuple(m.shape[2:]) for m in maps]
        assert spatial == [(s, s) for s in expected_sides(name, info, side)], f"{name} @ {side}"


def test_derived_sides_are_the_known_ones() -> None:
    # The derivations above against sizes quoted in the papers and torchvision's docs.
    assert _alexnet(224, 2) == [55, 27, 13, 6] and _alexnet(227, 0) == [55, 27, 13, 6]
    assert _googlenet(224) == [112, 56, 28, 14, 7]
    assert _inception_v3(299) == [147, 71, 35, 17, 8]


def _as_map(model: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """A Vision Transformer's tokens (class token first) as the map of its patch tokens."""
    prefix = getattr(model, "num_prefix_tokens", None)
    return out if prefix is None else tokens_to_map(out, prefix)


def _hooked_maps(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The oracle: each stage module's output during a plain forward_features pass (a ViT's
    tokens read as a map)."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for stage in model.feature_info:
        module = model.get_submodule(stage.module)

        def keep(_m: nn.Module, _i: object, out: torch.Tensor, name: str = stage.module) -> None:
            assert name not in captured, f"{name} ran twice"
            captured[name] = out.detach().clone()  # later in-place ops must not change it

        handles.append(module.register_forward_hook(keep))
    try:
        with torch.no_grad():
            final = model.forward_features(x)
    finally:
        for handle in handles:
            handle.remove()
    maps = [_as_map(model, captured[stage.module]) for stage in model.feature_info]
    return maps, _as_map(model, final)


def _real_model(name: str) -> nn.Module:
    """A CPU model whose backbone weights are filled cheaply (values do not matter here).

    Built on meta and given uninitialised storage; only the backbone's tensors are written, so
    the big classifiers (VGG's 120 M parameters) are never touched. A Vision Transformer is
    built for a 2x2 patch grid: its layers do not depend on the image size.
    """
    torch.manual_seed(0)
    kwargs = {}
    if get_entry(name).family == "vit":
        kwargs["image_size"] = 2 * meta_model(name).patch_size
    with torch.device("meta"):
        model = create_model(name, **kwargs).eval()
    model = model.to_empty(device="cpu")
    for param in feature_extractor(model).parameters():
        with torch.no_grad():
            param.uniform_(-1, 1).mul_(math.sqrt(3.0 / max(param[0].numel(), 1)))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
    return model


# Real tensors at the default size for the models that are cheap there; every model at its
# minimum size, where even VGG-19 or ResNet-1202 costs little (the maps are tiny), but for the
# 198-632 M-parameter ViT-L/H and ConvNeXt-L, whose code ViT-B and ConvNeXt-T run (their shapes
# are checked above, on the meta device).
CHEAP = [name for name in ALL_MODELS if count_params(name) < 8_000_000]
REAL = [name for name in ALL_MODELS if count_params(name) < 150_000_000]


@pytest.mark.parametrize(
    ("name", "size"),
    [(name, "min") for name in REAL] + [(name, "default") for name in CHEAP],
)
def test_maps_equal_hooked_activations(name: str, size: str) -> None:
    model = _real_model(name)
    side = model.min_input_size if size == "min" else model.default_cfg["input_size"][-1]
    x = torch.randn(2, model.default_cfg["input_size"][0], side, side)
    expected, final = _hooked_maps(model, x)
    with torch.no_grad():
        maps = feature_extractor(model)(x)
    assert len(maps) == len(expected)
    for stage, got, want in zip(model.feature_info, maps, expected, strict=True):
        assert torch.equal(got, want), f"{name}: {stage.module} differs"
        assert torch.isfinite(got).all()
    if name != "lenet5":  # LeNet-5's last stage is S4: C5's 1x1 output is not a map
        assert torch.equal(maps[-1], final), "the deepest stage is what the head reads"


def test_create_model_features_only_and_out_indices() -> None:
    net = create_model("resnet18", features_only=True, out_indices=(-1, 1))
    assert isinstance(net, FeatureNet)
    # timm's order: network order, whatever order the indices come in.
    assert net.feature_info.module_name() == ["layer1", "layer4"]
    assert net.feature_info.channels() == [64, 512]
    assert net.feature_info.reduction() == [4, 32]
    maps = net.eval()(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 16, 16), (1, 512, 2, 2)]
    # An int n means the last n stages.
    last_two = create_model("resnet20", features_only=True, out_indices=2)
    assert last_two.feature_info.module_name() == ["layer2", "layer3"]


def test_backbone_stops_after_its_last_stage() -> None:
    net = create_model("resnet18", features_only=True, out_indices=(0, 1))
    names = {name for name, _ in net.named_modules()}
    assert "layer1" in names and not names & {"layer2", "layer3", "layer4", "fc", "avgpool"}
    assert not any(key.startswith(("layer2", "fc")) for key in net.state_dict())


def test_full_checkpoint_loads_into_backbone() -> None:
    model = create_model("mobilenet_v3_small")
    net = create_model("mobilenet_v3_small", features_only=True)
    result = net.load_state_dict(model.state_dict(), strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys and all(
        k.startswith("classifier") for k in result.unexpected_keys
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.eval()(x)[-1], model.eval().forward_features(x))


def test_backbone_trains_batch_norm_and_passes_gradients() -> None:
    net = create_model("efficientnet_b0", features_only=True, out_indices=(1, 2))
    bn = net.get_submodule("features.0.1")
    before = bn.running_mean.clone()
    net.train()
    maps = net(torch.randn(2, 3, 32, 32))
    assert not torch.equal(bn.running_mean, before), "train mode must update batch-norm stats"
    sum(m.sum() for m in maps).backward()
    stem = net.get_submodule("features.0.0")
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
    net.eval()
    before = bn.running_mean.clone()
    net(torch.randn(2, 3, 32, 32))
    assert torch.equal(bn.running_mean, before)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"out_indices": (5,)}, "has 5 stages (0..4, or -5..-1): relu, layer1"),
        ({"out_indices": (-6,)}, "has 5 stages"),
        ({"out_indices": (1, -4)}, "names a stage twice"),
        ({"out_indices": 0}, "has 5 stages"),
    ],
)
def test_bad_out_indices(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        create_model("resnet18", features_only=True, **kwargs)


def test_out_indices_needs_features_only() -> None:
    with pytest.raises(ValueError, match="features_only"):
        create_model("resnet18", out_indices=(1,))


def test_backbone_checks_its_input() -> None:
    net = create_model("lenet_caffe", features_only=True)
    with pytest.raises(ValueError, match="28..28 px, got 32x32"):
        net(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="1-channel"):
        net(torch.randn(1, 3, 28, 28))
    lenet5 = create_model("lenet5", features_only=True)
    assert [tuple(m.shape[2:]) for m in lenet5(torch.randn(1, 1, 28, 28))] == [(14, 14), (5, 5)]


def test_feature_info_accessors() -> None:
    info = create_model("resnet50").feature_info
    assert info.channels() == [64, 256, 512, 1024, 2048]
    assert info.reduction() == [2, 4, 8, 16, 32]
    assert info.module_name() == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert info[-1].module == "layer4" and info[1:3].channels() == [256, 512]
    assert info.get_dicts()[0] == {"module": "relu", "num_chs": 64, "reduction": 2}
    small = create_model("resnet18", small_input=True, num_classes=10).feature_info
    assert small.reduction() == [1, 1, 2, 4, 8]
    preact = create_model("preact_resnet18").feature_info
    assert preact.module_name()[-1] == "relu_final"
