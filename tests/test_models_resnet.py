"""ImageNet ResNet family: what torchvision cannot check for us."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import cnnzoo
from cnnzoo.models.resnet import PreActBasicBlock, PreActBottleneck
from cnnzoo.registry import count_params


def gmacs(name: str, side: int = 224, **kwargs: object) -> float:
    with torch.device("meta"):
        model = cnnzoo.create_model(name, **kwargs).eval()
        x = torch.randn(1, 3, side, side)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2e9


def test_se_resnet50_matches_the_paper() -> None:
    # Hu et al.: ~2.5 M parameters and 0.01 GFLOPs more than ResNet-50 (3.86 -> 3.87 GFLOPs).
    extra = count_params("se_resnet50") - count_params("resnet50")
    assert extra == 2_530_992  # 2 * C^2/16 + C + C/16 per block, summed over the 16 blocks
    assert count_params("se_resnet50") == pytest.approx(28.1e6, abs=0.05e6)
    # The gates' two 1x1 convs act on pooled 1x1 maps: C^2/8 multiply-adds per block. The paper's
    # +0.01 GFLOPs also counts the pooling and the channel-wise rescaling, which are not
    # multiply-adds of a conv or matmul and so are not in the flop counter's total.
    extra_macs = (gmacs("se_resnet50") - gmacs("resnet50", stride_in_1x1=True)) * 1e9
    assert round(extra_macs) == sum(
        blocks * 2 * c * c // 16 for c, blocks in ((256, 3), (512, 4), (1024, 6), (2048, 3))
    )


def test_original_layout_reproduces_the_papers_resnet50_cost() -> None:
    """SE-Net quotes 3.86 GFLOPs for ResNet-50 v1 (stride in the first 1x1 conv); torchvision's
    v1.5 layout costs 4.09 G for the same parameters."""
    assert gmacs("resnet50", stride_in_1x1=True) == pytest.approx(3.86, abs=0.005)
    assert gmacs("resnet50") == pytest.approx(4.089, abs=0.0005)
    with torch.device("meta"):
        v1 = cnnzoo.create_model("se_resnet50")
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)


def test_resnext_and_wide_bottleneck_widths() -> None:
    with torch.device("meta"):
        resnext = cnnzoo.create_model("resnext50_32x4d")
        wide = cnnzoo.create_model("wide_resnet50_2")
    first = resnext.layer1[0]
    assert first.conv2.groups == 32 and first.conv2.out_channels == 128  # 32 groups x 4 wide
    assert wide.layer1[0].conv2.out_channels == 128 and wide.layer1[0].conv2.groups == 1


def test_preact_blocks_normalise_before_convolving() -> None:
    with torch.device("meta"):
        basic = cnnzoo.create_model("preact_resnet18")
        bottle = cnnzoo.create_model("preact_resnet50")
    assert isinstance(basic.layer1[0], PreActBasicBlock)
    assert isinstance(bottle.layer1[0], PreActBottleneck)
    assert basic.layer2[0].bn1.num_features == 64  # reads the stage input, before any conv
    assert len(basic.layer2[0].downsample) == 1  # a bare projection: no BN on the shortcut
    assert basic.bn_final.num_features == 512


def test_preact_identity_path_is_clean() -> None:
    """With every residual branch zeroed, a pre-activation stage is exactly the identity."""
    torch.manual_seed(0)
    model = cnnzoo.create_model("preact_resnet18", num_classes=10).eval()
    for block in model.layer1:
        torch.nn.init.zeros_(block.conv2.weight)
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.layer1(x), x)


def test_zero_init_residual_starts_blocks_as_identity_plus_relu() -> None:
    torch.manual_seed(0)
    model = cnnzoo.create_model("resnet50", num_classes=10, zero_init_residual=True).eval()
    x = torch.randn(1, 256, 8, 8).relu()
    with torch.no_grad():
        assert torch.allclose(model.layer1[1](x), x)


def test_small_input_stem() -> None:
    model = cnnzoo.create_model("resnet50", num_classes=10, in_chans=1, small_input=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
