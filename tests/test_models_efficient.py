"""What is specific to the mobile families: EfficientNet's compound scaling and stochastic depth,
the MobileNet / ShuffleNet sizes, and ShuffleNet's channel shuffle."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from cnnzoo import create_model
from cnnzoo.models.efficientnet import MBConv, StochasticDepth
from cnnzoo.models.shufflenet import ShuffleUnit, channel_shuffle
from cnnzoo.registry import count_params

EFFICIENTNETS = [f"efficientnet_b{i}" for i in range(8)]


def _stage_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """(blocks, out channels) of each MBConv stage, read off a torchvision-layout model."""
    shapes = []
    for stage in list(model.features)[1:-1]:
        last_conv = [m for m in stage[-1].block[-1].modules() if isinstance(m, nn.Conv2d)][-1]
        shapes.append((len(stage), last_conv.out_channels))
    return shapes


def test_b0_is_table_1_of_the_paper() -> None:
    with torch.device("meta"):
        model = create_model("efficientnet_b0")
    assert model.features[0][0].out_channels == 32
    assert _stage_shapes(model) == [
        (1, 16),
        (2, 24),
        (2, 40),
        (3, 80),
        (3, 112),
        (4, 192),
        (1, 320),
    ]
    assert model.features[-1][0].out_channels == 1280


@pytest.mark.parametrize("name", EFFICIENTNETS)
def test_compound_scaling_reproduces_torchvision_stages(name: str) -> None:
    with torch.device("meta"):
        ours = create_model(name)
        reference = getattr(tvm, name)()
    assert _stage_shapes(ours) == _stage_shapes(reference)
    assert ours.features[0][0].out_channels == reference.features[0][0].out_channels
    assert ours.num_features == reference.classifier[1].in_features
    assert ours.classifier[0].p == reference.classifier[0].p


def test_b7_depth_and_width_follow_the_rounding_rules() -> None:
    # depth 3.1: ceil(3.1 * n) repeats; width 2.0: channels doubled (all already multiples of 8).
    with torch.device("meta"):
        model = create_model("efficientnet_b7")
    assert _stage_shapes(model) == [
        (4, 32),
        (7, 48),
        (7, 80),
        (10, 160),
        (10, 224),
        (13, 384),
        (4, 640),
    ]


# Tan & Le 2019, Table 2 (millions, as printed) next to torchvision's exact counts.
PAPER_PARAMS = {
    "efficientnet_b0": (5.3, 5_288_548),
    "efficientnet_b1": (7.8, 7_794_184),
    "efficientnet_b2": (9.2, 9_109_994),
    "efficientnet_b3": (12, 12_233_232),
    "efficientnet_b4": (19, 19_341_616),
    "efficientnet_b5": (30, 30_389_784),
    "efficientnet_b6": (43, 43_040_704),
    "efficientnet_b7": (66, 66_347_960),
}


@pytest.mark.parametrize("name", EFFICIENTNETS)
def test_efficientnet_params_match_the_paper(name: str) -> None:
    paper_millions, exact = PAPER_PARAMS[name]
    params = count_params(name)
    assert params == exact
    # The paper prints one decimal below 10 M and whole millions above; B2 is the loosest
    # (9.11 M against the printed 9.2 M).
    tolerance = 0.1 if paper_millions < 10 else 0.5
    assert abs(params / 1e6 - paper_millions) <= tolerance


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("mobilenet_v2", 3_504_872),
        ("mobilenet_v3_large", 5_483_032),
        ("mobilenet_v3_small", 2_542_856),
        ("shufflenet_v2_x0_5", 1_366_792),
        ("shufflenet_v2_x1_0", 2_278_604),
        ("shufflenet_v2_x1_5", 3_503_624),
        ("shufflenet_v2_x2_0", 7_393_996),
    ],
)
def test_mobile_param_counts(name: str, params: int) -> None:
    assert count_params(name) == params


def test_mobilenet_v2_is_the_papers_3_4m_network() -> None:
    # Sandler et al. quote 3.4 M parameters for MobileNetV2 1.0.
    assert round(count_params("mobilenet_v2") / 1e6, 1) in (3.4, 3.5)


def test_default_input_sizes_are_the_papers_resolutions() -> None:
    sizes = []
    for name in EFFICIENTNETS:
        with torch.device("meta"):
            sizes.append(create_model(name).default_cfg["input_size"][1:])
    assert sizes == [(s, s) for s in (224, 240, 260, 300, 380, 456, 528, 600)]


def test_stochastic_depth_rate_grows_linearly_with_block_index() -> None:
    with torch.device("meta"):
        model = create_model("efficientnet_b0")
    rates = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    assert len(rates) == 16
    assert rates == pytest.approx([0.2 * i / 16 for i in range(16)])


def test_stochastic_depth_drops_whole_residual_branches_in_train_mode() -> None:
    torch.manual_seed(0)
    block = MBConv(32, 32, expand_ratio=6, kernel=3, stride=1, drop_prob=0.5)
    x = torch.randn(64, 32, 8, 8)
    block.train()
    with torch.no_grad():
        out = block(x)
    dropped = (out == x).flatten(1).all(dim=1)
    # Binomial(64, 0.5): both kinds of sample occur; the rest are changed everywhere.
    assert 10 <= int(dropped.sum()) <= 54
    assert (out[~dropped] != x[~dropped]).flatten(1).float().mean() > 0.99

    block.eval()
    with torch.no_grad():
        assert not (block(x) == x).flatten(1).all(dim=1).any()
        assert torch.equal(block(x), block(x))


def test_efficientnet_is_stochastic_only_in_train_mode() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    model = create_model("efficientnet_b0", num_classes=10, dropout=0.0)
    plain = create_model("efficientnet_b0", num_classes=10, dropout=0.0, stochastic_depth_prob=0.0)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        # Evaluation keeps every branch unscaled: the same function as with no stochastic depth.
        model.eval()
        plain.eval()
        assert torch.equal(model(x), model(x))
        torch.testing.assert_close(model(x), plain(x))
        model.train()
        plain.train()
        assert not torch.equal(model(x), model(x))
        assert torch.equal(plain(x), plain(x))


def test_efficientnet_b5_to_b7_use_tensorflow_batch_norm() -> None:
    for name, eps, momentum in [
        ("efficientnet_b4", 1e-5, 0.1),
        ("efficientnet_b5", 1e-3, 0.01),
        ("efficientnet_b7", 1e-3, 0.01),
    ]:
        with torch.device("meta"):
            model = create_model(name)
        norms = {(m.eps, m.momentum) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
        assert norms == {(eps, momentum)}, name


def test_channel_shuffle_interleaves_groups() -> None:
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    # Shuffling with g groups and then with c/g groups is the identity.
    assert torch.equal(channel_shuffle(channel_shuffle(x, 2), 4), x)


def test_shuffle_unit_passes_one_half_through_to_alternate_channels() -> None:
    torch.manual_seed(0)
    unit = ShuffleUnit(16, 16, stride=1).eval()
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        out = unit(x)
    # Channel split keeps the first half untouched; the shuffle puts it on the even channels.
    assert torch.equal(out[:, 0::2], x[:, :8])
    assert not torch.allclose(out[:, 1::2], x[:, 8:])
    # The downsampling unit uses both branches on the whole input and halves the resolution.
    down = ShuffleUnit(16, 32, stride=2).eval()
    with torch.no_grad():
        assert down(x).shape == (2, 32, 3, 3)


def test_mobilenet_v3_head_pools_before_the_last_linear_layers() -> None:
    model = create_model("mobilenet_v3_small", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        pre = model.forward_head(features, pre_logits=True)
        logits = model(x)
    assert features.shape == (2, 576, 2, 2)
    assert pre.shape == (2, 1024)
    torch.testing.assert_close(logits, model.classifier[3](pre))
