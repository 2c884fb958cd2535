"""CIFAR ResNets, plain nets, pre-activation ResNets and Wide ResNets against their papers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnzoo
from cnnzoo.models.resnet_cifar import (
    CIFAR10_TEST_ERROR,
    CIFAR100_TEST_ERROR,
    BasicBlock,
    CifarResNet,
    PreActResNet,
    ShortcutA,
    wide_resnet_cifar,
)
from cnnzoo.registry import get_entry, list_models

# He et al. 2015, Table 6 (exact counts for 10 classes, RGB). Option-A shortcuts carry no
# weights, so each plain net has exactly the count of its ResNet.
CIFAR_RESNET_PARAMS = {
    20: 269_722,
    32: 464_154,
    44: 658_586,
    56: 853_018,
    110: 1_727_962,
    1202: 19_421_274,
}
# Millions of parameters the pre-activation and WRN papers print (10 classes).
PAPER_MILLIONS = {
    "preact_resnet110": 1.7,
    "preact_resnet164": 1.7,
    "wrn16_8": 11.0,
    "wrn28_10": 36.5,
    "wrn40_4": 8.9,
}


def meta_param_count(name: str, **kwargs: int) -> int:
    with torch.device("meta"):
        model = cnnzoo.create_model(name, num_classes=10, **kwargs)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", sorted(CIFAR_RESNET_PARAMS))
def test_resnet_and_plain_parameter_counts_are_exact(depth: int) -> None:
    assert meta_param_count(f"resnet{depth}") == CIFAR_RESNET_PARAMS[depth]
    if depth != 1202:
        assert meta_param_count(f"plain{depth}") == CIFAR_RESNET_PARAMS[depth]


@pytest.mark.parametrize("name", sorted(PAPER_MILLIONS))
def test_preact_and_wide_parameter_counts_match_papers(name: str) -> None:
    assert meta_param_count(name) == pytest.approx(PAPER_MILLIONS[name] * 1e6, abs=0.05e6)


def test_wrn28_10_parameter_count_is_exact() -> None:
    # Sum by hand: stem 432; 3 stages of 4 blocks (3x3 convs, BN over the block input and the
    # mid width); 1x1 projections 16->160, 160->320, 320->640; final BN 1280; fc 6410.
    assert meta_param_count("wrn28_10") == 36_479_194


def test_layer_counts_match_model_names() -> None:
    """Depth = weighted layers on the longest path: convs (not projections) plus the fc."""
    for name, depth in [("resnet110", 110), ("preact_resnet110", 110), ("preact_resnet164", 164)]:
        with torch.device("meta"):
            model = cnnzoo.create_model(name, num_classes=10)
        layers = [
            n
            for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not n.endswith("shortcut")
        ]
        assert len(layers) == depth, name


def test_option_a_shortcut_has_no_parameters_and_pads_zero_channels() -> None:
    shortcut = ShortcutA(16, 32, stride=2)
    assert list(shortcut.parameters()) == []
    x = torch.randn(2, 16, 9, 9)
    out = shortcut(x)
    assert out.shape == (2, 32, 5, 5)  # same size as a stride-2, padding-1 3x3 conv gives
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.equal(out[:, 16:], torch.zeros(2, 16, 5, 5))
    with torch.device("meta"):
        resnet, plain = cnnzoo.create_model("resnet56"), cnnzoo.create_model("plain56")
    assert resnet.state_dict().keys() == plain.state_dict().keys()


def test_downsampling_block_adds_input_only_to_the_old_channels() -> None:
    torch.manual_seed(0)
    block = BasicBlock(16, 32, stride=2)
    for bn in (block.bn1, block.bn2):  # non-trivial statistics, so BN is not the identity
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    block.eval()
    x = torch.randn(2, 16, 8, 8).relu()
    with torch.no_grad():
        branch = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        out = block(x)
    assert isinstance(block.shortcut, ShortcutA)
    torch.testing.assert_close(out[:, :16], F.relu(branch[:, :16] + x[:, :, ::2, ::2]))
    torch.testing.assert_close(out[:, 16:], F.relu(branch[:, 16:]))


def zero_block_convs(model: nn.Module) -> None:
    """Silence every residual branch: block convs 0 -> BN(0) = beta = 0 in eval mode."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and name.startswith("layer"):
            nn.init.zeros_(module.weight)


def test_plain_net_has_no_additive_shortcut_but_resnet_does() -> None:
    torch.manual_seed(0)
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    plain = cnnzoo.create_model("plain20", num_classes=10).eval()
    resnet = cnnzoo.create_model("resnet20", num_classes=10).eval()
    assert all(b.shortcut is None for b in plain.modules() if isinstance(b, BasicBlock))
    zero_block_convs(plain)
    zero_block_convs(resnet)
    with torch.no_grad():
        # Plain: nothing reaches the head, whatever the input; only the fc bias remains.
        torch.testing.assert_close(plain(x1), plain.fc.bias.expand(2, 10), rtol=0, atol=0)
        torch.testing.assert_close(plain(x2), plain(x1), rtol=0, atol=0)
        # ResNet: the stem features travel through the two option-A shortcuts untouched,
        # subsampled 4x and padded with 48 zero channels.
        stem = resnet.relu(resnet.bn1(resnet.conv1(x1)))
        expected = F.pad(stem[:, :, ::4, ::4], (0, 0, 0, 0, 0, 48))
        torch.testing.assert_close(resnet.forward_features(x1), expected, rtol=0, atol=0)
        assert not torch.allclose(resnet(x1), resnet(x2))


def test_preact_projections_sit_exactly_where_the_shape_changes() -> None:
    with torch.device("meta"):
        models = {
            name: cnnzoo.create_model(name, num_classes=10)
            for name in ("preact_resnet110", "preact_resnet164", "wrn28_10")
        }
    # Basic units keep 16 channels in stage 1; bottlenecks and wide stages expand it.
    expected_projections = {"preact_resnet110": 2, "preact_resnet164": 3, "wrn28_10": 3}
    for name, model in models.items():
        projections = [
            m
            for n, m in model.named_modules()
            if n.endswith("shortcut") and isinstance(m, nn.Conv2d)
        ]
        assert len(projections) == expected_projections[name], name
        assert all(p.kernel_size == (1, 1) and p.bias is None for p in projections)
    assert models["wrn28_10"].layer2[0].shortcut.stride == (2, 2)
    assert models["wrn28_10"].num_features == 640


def test_preact_unit_output_is_not_rectified_but_features_are() -> None:
    torch.manual_seed(0)
    model = cnnzoo.create_model("preact_resnet110", num_classes=10).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        after_units = model.layer3(model.layer2(model.layer1(model.conv1(x))))
        features = model.forward_features(x)
    assert (after_units < 0).any()  # identity mapping: no ReLU after the addition
    assert (features >= 0).all() and (features > 0).any()  # final BN-ReLU before pooling


@pytest.mark.parametrize("depth", [27, 29, 4, 0])
def test_wrn_depth_must_be_6n_plus_4(depth: int) -> None:
    with pytest.raises(ValueError, match="6n\\+4"):
        wide_resnet_cifar(depth, 10)


def test_wrn_general_builder_widths_depth_and_dropout() -> None:
    torch.manual_seed(0)
    model = wide_resnet_cifar(10, 2, dropout=0.3, num_classes=5, in_chans=1)
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [1, 1, 1]
    assert [s[0].conv2.out_channels for s in (model.layer1, model.layer2, model.layer3)] == [
        32,
        64,
        128,
    ]
    assert isinstance(model.layer1[0].dropout, nn.Dropout) and model.layer1[0].dropout.p == 0.3
    x = torch.randn(4, 1, 12, 12)
    model.train()
    assert not torch.allclose(model(x), model(x))  # dropout is active between the convs
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    no_dropout = wide_resnet_cifar(10, 2)
    assert not any(isinstance(m, nn.Dropout) for m in no_dropout.modules())


def test_cifar_resnet_class_builds_any_6n_plus_2_depth() -> None:
    with torch.device("meta"):
        model = CifarResNet(2, shortcut=False)
    assert model.depth == 14 and [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [
        2,
        2,
        2,
    ]
    with pytest.raises(ValueError, match="at least one block"):
        CifarResNet(0)


@pytest.mark.parametrize(
    ("name", "in_chans", "side"),
    [
        ("resnet20", 3, 32),
        ("resnet20", 1, 28),
        ("plain20", 3, 32),
        ("plain20", 1, 28),
        # The deep and the wide nets at a smaller side, to keep the suite fast on a CPU.
        ("preact_resnet164", 1, 12),
        ("wrn16_8", 3, 12),
    ],
)
def test_forward_backward(name: str, in_chans: int, side: int) -> None:
    torch.manual_seed(0)
    model = cnnzoo.create_model(name, num_classes=10, in_chans=in_chans)
    x = torch.randn(2, in_chans, side, side)
    logits = model(x)
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, torch.tensor([3, 7])).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, pname


def test_any_side_from_one_pixel_works() -> None:
    model = cnnzoo.create_model("resnet20", num_classes=10).eval()
    with torch.no_grad():
        for side in (1, 2, 3, 5, 33):
            assert model(torch.randn(1, 3, side, side)).shape == (1, 10)
    assert model.min_input_size == 1


def test_initialisation_is_he_normal_fan_out() -> None:
    torch.manual_seed(0)
    model = cnnzoo.create_model("resnet56", num_classes=10)
    weights = torch.cat([b.conv2.weight.flatten() for b in model.layer3])  # 9 x 36,864 values
    assert weights.mean().item() == pytest.approx(0.0, abs=2e-3)
    assert weights.std().item() == pytest.approx(math.sqrt(2 / (3 * 3 * 64)), rel=0.02)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(bn.weight, torch.ones_like(bn.weight)) for bn in bns)
    assert all(torch.equal(bn.bias, torch.zeros_like(bn.bias)) for bn in bns)


def test_registry_entries_carry_cifar_defaults_and_paper_errors() -> None:
    names = list_models(family="resnet_cifar")
    assert set(CIFAR10_TEST_ERROR) | set(CIFAR100_TEST_ERROR) <= set(names)
    assert CIFAR10_TEST_ERROR["resnet110"] == 6.43 and CIFAR10_TEST_ERROR["resnet1202"] == 7.93
    assert CIFAR10_TEST_ERROR["preact_resnet164"] == 5.46
    assert CIFAR10_TEST_ERROR["wrn28_10"] == 4.00 and CIFAR100_TEST_ERROR["wrn28_10"] == 19.25
    for name in names:
        entry = get_entry(name)
        assert entry.imagenet_top1 is None and entry.torchvision_name is None
        assert entry.input_size == 32
        assert entry.mean == (0.4914, 0.4822, 0.4465) and entry.std == (0.2470, 0.2435, 0.2616)
    with torch.device("meta"):
        model = cnnzoo.create_model("wrn28_10", num_classes=100)
    assert isinstance(model, PreActResNet) and model.default_cfg["input_size"] == (3, 32, 32)
    assert model.get_classifier().in_features == 640
