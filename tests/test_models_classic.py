"""Family-specific checks for LeNet, AlexNet, VGG, GoogLeNet and Inception-v3.

Parameter counts and shapes are the papers' and torchvision's (see NUMBERS.md); the generic
torchvision-equivalence checks live in test_zoo.py.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cnnzoo import create_model
from cnnzoo.models.layers import WholeInputConv2d
from cnnzoo.registry import get_entry


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_params(name: str, **kwargs) -> int:
    with torch.device("meta"):
        return n_params(create_model(name, **kwargs))


def output_shapes(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))
        )
        for name in names
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return shapes


# ----------------------------------------------------------------------------------------- LeNet


def test_lenet5_param_count_and_layer_shapes():
    model = create_model("lenet5", num_classes=10, in_chans=1).eval()
    assert n_params(model) == 61_706
    names = ["conv1", "pool1", "conv2", "pool2", "conv3", "fc1", "fc"]
    shapes = output_shapes(model, names, torch.randn(2, 1, 32, 32))
    assert shapes == {
        "conv1": (6, 28, 28),  # C1
        "pool1": (6, 14, 14),  # S2
        "conv2": (16, 10, 10),  # C3
        "pool2": (16, 5, 5),  # S4
        "conv3": (120, 1, 1),  # C5
        "fc1": (84,),  # F6
        "fc": (10,),
    }
    assert model.default_cfg["input_size"] == (1, 32, 32)


@pytest.mark.parametrize("channels_last", [False, True])
def test_lenet5_fast_forward_equals_the_textbook_order(channels_last: bool):
    """Pool-then-ReLU and C5 as a matrix product give the same logits and gradients as
    conv -> ReLU -> pool with C5 as a convolution."""
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_chans=1)
    x = torch.randn(16, 1, 28, 28)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def textbook(x: torch.Tensor) -> torch.Tensor:
        m = model
        x = nn.functional.pad(x, (2, 2, 2, 2))
        x = m.pool1(nn.functional.relu(m.conv1(x)))
        x = m.pool2(nn.functional.relu(m.conv2(x)))
        x = nn.functional.relu(nn.functional.conv2d(x, m.conv3.weight, m.conv3.bias))
        return m.fc(nn.functional.relu(m.fc1(x.flatten(1))))

    def logits_and_grads(forward) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = forward(x)
        nn.functional.cross_entropy(out, torch.arange(16) % 10).backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    fast_out, fast_grads = logits_and_grads(model)
    ref_out, ref_grads = logits_and_grads(textbook)
    torch.testing.assert_close(fast_out, ref_out, rtol=1e-5, atol=1e-6)
    for fast, ref in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-6)


def test_whole_input_conv_is_a_conv_on_any_input():
    torch.manual_seed(0)
    conv = WholeInputConv2d(4, 7, kernel_size=3)
    for size in (3, 6):  # the matrix-product path, then the ordinary convolution
        x = torch.randn(2, 4, size, size)
        torch.testing.assert_close(
            conv(x), nn.functional.conv2d(x, conv.weight, conv.bias), rtol=1e-5, atol=1e-6
        )
    assert set(conv.state_dict()) == {"weight", "bias"}


def test_lenet5_pads_28px_images_to_32_like_the_paper():
    model = create_model("lenet5", num_classes=10, in_chans=1).eval()
    image = torch.randn(3, 1, 28, 28)
    padded = torch.zeros(3, 1, 32, 32)
    padded[:, :, 2:30, 2:30] = image
    with torch.no_grad():
        out28, out32 = model(image), model(padded)
    assert out28.shape == (3, 10)
    torch.testing.assert_close(out28, out32, rtol=0, atol=0)
    # Anything between 28 and 32 is centred too.
    assert model(torch.randn(1, 1, 30, 29)).shape == (1, 10)


@pytest.mark.parametrize("side", [27, 33, 64])
def test_lenet5_rejects_sizes_outside_28_to_32(side: int):
    model = create_model("lenet5", num_classes=10, in_chans=1)
    with pytest.raises(ValueError, match="resize"):
        model(torch.randn(1, 1, side, side))


def test_lenet_caffe_matches_the_seed_keras_summary():
    model = create_model("lenet_caffe", num_classes=10, in_chans=1).eval()
    assert n_params(model) == 431_080
    shapes = output_shapes(
        model, ["conv1", "pool1", "conv2", "pool2", "fc1", "fc"], torch.randn(2, 1, 28, 28)
    )
    assert shapes == {
        "conv1": (20, 24, 24),
        "pool1": (20, 12, 12),
        "conv2": (50, 8, 8),
        "pool2": (50, 4, 4),
        "fc1": (500,),
        "fc": (10,),
    }
    per_layer = [n_params(model.get_submodule(n)) for n in ("conv1", "conv2", "fc1", "fc")]
    assert per_layer == [520, 25_050, 400_500, 5_010]
    with pytest.raises(ValueError, match="exactly 28x28"):
        model(torch.randn(1, 1, 32, 32))


# --------------------------------------------------------------------------------------- AlexNet


def test_alexnet_v1_has_the_papers_60_million_parameters():
    assert meta_params("alexnet_v1") == 60_965_224
    with torch.device("meta"):
        model = create_model("alexnet_v1")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    # The two-GPU split: conv2, conv4 and conv5 only see their own half of the kernel maps.
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in model.features) == 2
    entry = get_entry("alexnet_v1")
    assert entry.input_size == 227 and entry.imagenet_top1 == pytest.approx(100 - 40.7)


def test_alexnet_v1_shapes_min_size_and_paper_init():
    model = create_model("alexnet_v1", num_classes=10).eval()
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, 227, 227)).shape == (1, 256, 6, 6)
        assert model(torch.randn(1, 3, 67, 67)).shape == (1, 10)
        with pytest.raises(RuntimeError):  # the raw stack really cannot go below 67 px
            model.features(torch.randn(1, 3, 66, 66))
    assert model.min_input_size == 67
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    biases = [float(c.bias.detach().mean()) for c in convs]
    assert biases == [0.0, 1.0, 0.0, 1.0, 1.0]  # Section 5
    assert float(model.classifier[1].bias.detach().mean()) == 1.0
    assert float(model.classifier[6].bias.detach().abs().max()) == 0.0
    assert float(convs[2].weight.detach().std()) == pytest.approx(0.01, rel=0.02)


def test_alexnet_v1_lrn_computes_the_papers_formula():
    with torch.device("meta"):
        model = create_model("alexnet_v1")
    lrn = model.features[2]
    assert isinstance(lrn, nn.LocalResponseNorm)
    torch.manual_seed(0)
    a = 30 * torch.randn(2, 7, 3, 3)  # large activations, so the alpha term matters
    k, n, alpha, beta = 2.0, 5, 1e-4, 0.75
    expected = torch.empty_like(a)
    channels = a.shape[1]
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        total = (a[:, lo : hi + 1] ** 2).sum(dim=1)
        expected[:, i] = a[:, i] / (k + alpha * total) ** beta
    torch.testing.assert_close(lrn(a), expected, rtol=1e-5, atol=1e-6)
    # PyTorch's layer with the paper's alpha as given divides it by n: a different function.
    naive = nn.LocalResponseNorm(n, alpha=alpha, beta=beta, k=k)(a)
    assert (naive - expected).abs().max() > 1e-2


def test_alexnet_torchvision_layout():
    assert meta_params("alexnet") == 61_100_840
    with torch.device("meta"):
        model = create_model("alexnet")
    assert model.min_input_size == 63
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())


# ------------------------------------------------------------------------------------------- VGG

VGG_PARAMS = {
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
}


@pytest.mark.parametrize("name", list(VGG_PARAMS))
def test_vgg_configs_give_torchvisions_param_counts(name: str):
    assert meta_params(name) == VGG_PARAMS[name]
    with torch.device("meta"):
        model = create_model(name)
    depth = int(name[3:5])
    convs = sum(isinstance(m, nn.Conv2d) for m in model.features)
    assert convs + 3 == depth  # weight layers = convs + the three dense layers (Table 1)
    assert model.min_input_size == 32


@pytest.mark.parametrize("name", list(VGG_PARAMS))
def test_vgg_small_input_param_counts(name: str):
    # The 7x7x512 -> 4096 dense layer becomes 512 -> 4096; everything else is unchanged.
    assert meta_params(name, small_input=True) == VGG_PARAMS[name] - 48 * 512 * 4096


def test_vgg_small_input_runs_on_28_and_32px():
    model = create_model("vgg11_bn", num_classes=10, in_chans=1, small_input=True)
    assert model.min_input_size == 16
    assert model.get_classifier().in_features == 4096
    assert model.classifier[0].in_features == 512
    for side in (28, 32):
        out = model(torch.randn(2, 1, side, side))
        assert out.shape == (2, 10)
    out.sum().backward()
    assert model.features[0].weight.grad is not None
    model.eval()
    with torch.no_grad(), pytest.raises(RuntimeError):
        model.forward_head(model.forward_features(torch.randn(1, 1, 15, 15)))


def test_vgg_normal_mode_rejects_28px_and_suggests_small_input():
    with torch.device("meta"):
        model = create_model("vgg11", num_classes=10, in_chans=1)
    with pytest.raises(ValueError, match="small_input=True"):
        model.check_input(torch.empty(1, 1, 28, 28, device="meta"))


# ------------------------------------------------------------------------- GoogLeNet / Inception


@pytest.mark.parametrize(
    ("name", "with_aux", "without_aux"),
    [("googlenet", 13_004_888, 6_624_904), ("inception_v3", 27_161_264, 23_834_568)],
)
def test_inception_params_with_and_without_aux(name: str, with_aux: int, without_aux: int):
    assert meta_params(name) == with_aux
    assert meta_params(name, aux_logits=False) == without_aux


def constant_head(linear: nn.Linear, value: float) -> None:
    """Make a classifier output ``value`` everywhere, to tell the heads apart by their output."""
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(value)


def test_googlenet_training_outputs_aux_heads_in_torchvision_order():
    model = create_model("googlenet", num_classes=10, in_chans=1)
    constant_head(model.aux1.fc2, 1.0)
    constant_head(model.aux2.fc2, 2.0)
    out = model.train()(torch.randn(2, 1, 32, 32))
    assert type(out).__name__ == "GoogLeNetOutputs"
    assert out._fields == ("logits", "aux_logits2", "aux_logits1")
    assert [tuple(t.shape) for t in out] == [(2, 10)] * 3
    assert torch.all(out.aux_logits2 == 2.0) and torch.all(out.aux_logits1 == 1.0)
    (out.logits.sum() + 0.3 * (out.aux_logits1.sum() + out.aux_logits2.sum())).backward()
    assert model.aux1.conv.conv.weight.grad is not None
    with torch.no_grad():
        plain = model.eval()(torch.randn(2, 1, 32, 32))
    assert type(plain) is torch.Tensor and plain.shape == (2, 10)
    # The aux heads pool adaptively, so training works down to the smallest input.
    with torch.no_grad():
        assert len(model.train()(torch.randn(2, 1, 15, 15))) == 3


def test_googlenet_training_outputs_equal_torchvisions():
    torch.manual_seed(0)
    theirs = torchvision.models.googlenet(init_weights=True)
    ours = create_model("googlenet")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for model in (theirs, ours):
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0  # make training mode deterministic
        model.train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pairs = list(zip(ours(x), theirs(x), strict=True))
    assert len(pairs) == 3
    for mine, reference in pairs:
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-5)


def test_inception_v3_training_outputs_and_aux_size_limit():
    model = create_model("inception_v3", num_classes=10, in_chans=1)
    constant_head(model.AuxLogits.fc, 3.0)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()  # running statistics, so that one 299 px image is enough (and cheap)
    with torch.no_grad():
        out = model(torch.randn(1, 1, 299, 299))
    assert type(out).__name__ == "InceptionOutputs"
    assert out._fields == ("logits", "aux_logits")
    assert out.logits.shape == (1, 10) and torch.all(out.aux_logits == 3.0)
    with pytest.raises(ValueError, match="at least 299x299 pixels in training mode"):
        model(torch.randn(1, 1, 298, 298))
    with torch.no_grad():
        plain = model.eval()(torch.randn(1, 1, 75, 75))
    assert type(plain) is torch.Tensor and plain.shape == (1, 10)
    model.aux_logits = False  # as if built with aux_logits=False: small training inputs are fine
    with torch.no_grad():
        assert model.train()(torch.randn(2, 1, 75, 75)).shape == (2, 10)


def test_reset_classifier_resets_the_aux_heads():
    with torch.device("meta"):
        googlenet = create_model("googlenet")
        inception = create_model("inception_v3")
    googlenet.reset_classifier(7)
    inception.reset_classifier(7)
    heads = [googlenet.fc, googlenet.aux1.fc2, googlenet.aux2.fc2, inception.fc]
    heads.append(inception.AuxLogits.fc)
    assert [h.out_features for h in heads] == [7] * 5
    assert googlenet.num_classes == inception.num_classes == 7
    googlenet.reset_classifier(0)
    assert googlenet.aux1 is None and googlenet.aux2 is None and not googlenet.aux_logits


def test_transform_input_needs_rgb():
    with torch.device("meta"):
        assert create_model("googlenet").transform_input is False
    with pytest.raises(ValueError, match="in_chans=3"):
        create_model("inception_v3", in_chans=1, transform_input=True)
