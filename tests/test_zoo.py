"""Every registered model against torchvision and against its own contract."""

from __future__ import annotations

import pytest
import torch
import torchvision

import cnnzoo
from cnnzoo.registry import count_params, get_entry

ALL_MODELS = cnnzoo.list_models()
TORCHVISION_MODELS = [name for name in ALL_MODELS if get_entry(name).torchvision_name]

# The full list: nothing may silently go missing from the registry.
REQUIRED = """
lenet5 lenet_caffe alexnet alexnet_v1 vgg11 vgg13 vgg16 vgg19 vgg11_bn vgg13_bn vgg16_bn vgg19_bn
googlenet inception_v3 resnet18 resnet34 resnet50 resnet101 resnet152 resnext50_32x4d
resnext101_32x8d resnext101_64x4d wide_resnet50_2 wide_resnet101_2 se_resnet18 se_resnet34
se_resnet50 se_resnet101 se_resnet152 se_resnext50_32x4d preact_resnet18 preact_resnet34
preact_resnet50 preact_resnet101 preact_resnet152 resnet20 resnet32 resnet44 resnet56 resnet110
resnet1202 plain20 plain32 plain44 plain56 plain110 preact_resnet110 preact_resnet164 wrn28_10
efficientnet_b0 efficientnet_b1 efficientnet_b2 efficientnet_b3 efficientnet_b4 efficientnet_b5
efficientnet_b6 efficientnet_b7 mobilenet_v2 mobilenet_v3_large mobilenet_v3_small
shufflenet_v2_x0_5 shufflenet_v2_x1_0 shufflenet_v2_x1_5 shufflenet_v2_x2_0
vit_b_16 vit_b_32 vit_l_16 vit_l_32 vit_h_14 convnext_tiny convnext_small convnext_base
convnext_large vit_cifar_4 convnext_cifar
""".split()

# Forward+backward at the default size only where it is cheap on a CPU; bigger models are
# exercised at a small size instead (their structure does not depend on the input size).
CHEAP_DEFAULT_SIZE = {"lenet5", "lenet_caffe", "mobilenet_v3_small", "shufflenet_v2_x0_5"}
# Models this big (ViT-L, ViT-H, ConvNeXt-L: 198-632 M parameters) are checked on the meta
# device where shapes suffice (their code paths are those of ViT-B and ConvNeXt-T, which run
# for real): building one on the CPU takes seconds and gigabytes.
HEAVY = {name for name in ALL_MODELS if count_params(name) > 150_000_000}
# Bigger members of a family whose code a smaller member runs for real (ConvNeXt-S and -B:
# ConvNeXt-T's; ViT-B/32: ViT-B/16's) are compared with torchvision (strict loading) and
# trained on the meta device too: on the CPU each would cost the suite most of a minute.
ON_META = HEAVY | {"convnext_small", "convnext_base", "vit_b_32"}


def cheap_kwargs(name: str) -> dict[str, int]:
    """Builder options for a cheap run: a Vision Transformer for a 2x2 patch grid (its layers
    are the same at any image size; only the position embeddings follow it)."""
    if get_entry(name).family != "vit":
        return {}
    with torch.device("meta"):
        patch = cnnzoo.create_model(name).patch_size
    return {"image_size": 2 * patch}


def randomize_zero_parameters(model: torch.nn.Module) -> None:
    """Fill parameters initialised to zero (a ViT's head): otherwise both outputs are zero."""
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(std=0.02)


def torchvision_model(name: str) -> torch.nn.Module:
    kwargs = {"init_weights": True} if name in {"googlenet", "inception_v3"} else {}
    return getattr(torchvision.models, get_entry(name).torchvision_name)(**kwargs)


def comparison_side(model: cnnzoo.models.ZooModel) -> int:
    return model.fixed_input_size or max(model.min_input_size, 64)


def test_every_required_model_is_registered() -> None:
    assert sorted(set(REQUIRED) - set(ALL_MODELS)) == []


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_parameter_count_equals_torchvision(name: str) -> None:
    with torch.device("meta"):
        reference = torchvision_model(name)
    assert count_params(name) == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("name", [n for n in TORCHVISION_MODELS if n not in ON_META])
def test_torchvision_state_dict_loads_strictly_and_outputs_match(name: str) -> None:
    torch.manual_seed(0)
    reference = torchvision_model(name).eval()
    randomize_zero_parameters(reference)
    with torch.device("meta"):
        model = cnnzoo.create_model(name)
    model.load_state_dict(reference.state_dict(), strict=True, assign=True)
    model.eval()
    side = comparison_side(model)
    x = torch.randn(2, 3, side, side)
    with torch.inference_mode():
        expected, actual = reference(x), model(x)
    assert actual.shape == expected.shape == (2, 1000)
    assert (actual - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", sorted(ON_META))
def test_heavy_torchvision_state_dict_loads_strictly(name: str) -> None:
    with torch.device("meta"):
        reference, model = torchvision_model(name), cnnzoo.create_model(name)
    expected = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == expected
    model.load_state_dict(reference.state_dict(), strict=True, assign=True)


def _train_step(model: torch.nn.Module, side: int, in_chans: int) -> None:
    model.train()
    # Eight images: at a 1x1 input, BatchNorm over only two values per channel can blow up.
    x = torch.randn(8, in_chans, side, side)
    out = model(x)
    outputs = list(out) if isinstance(out, tuple) else [out]  # auxiliary heads train too
    for logits in outputs:
        assert logits.shape == (8, 10)
        assert torch.isfinite(logits).all()
    sum(logits.sum() for logits in outputs).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", sorted(ON_META))
def test_heavy_models_train_on_the_meta_device(name: str) -> None:
    for in_chans in (1, 3):
        with torch.device("meta"):
            model = cnnzoo.create_model(
                name, num_classes=10, in_chans=in_chans, **cheap_kwargs(name)
            )
        model.train()
        side = model.fixed_input_size or max(model.min_input_size, 64)
        logits = model(torch.randn(8, in_chans, side, side, device="meta"))
        assert logits.shape == (8, 10)
        logits.sum().backward()
        for param in model.parameters():
            assert param.grad is not None and param.grad.shape == param.shape


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if n not in ON_META])
def test_forward_backward_ten_classes_one_and_three_channels(name: str) -> None:
    torch.manual_seed(0)
    for in_chans in (1, 3):
        model = cnnzoo.create_model(name, num_classes=10, in_chans=in_chans, **cheap_kwargs(name))
        if model.fixed_input_size:
            sides = {model.min_input_size, model.fixed_input_size}
        else:
            default = model.default_cfg["input_size"][-1]
            small = max(model.min_input_size, 64)
            sides = {model.min_input_size, default if name in CHEAP_DEFAULT_SIZE else small}
            if name.startswith("inception"):
                sides = {model.min_input_size, 96}
        for side in sorted(sides):
            if name in {"googlenet", "inception_v3"} and side < model.aux_min_input_size:
                model.eval()  # the auxiliary heads need bigger maps; training is checked at 96+
                with torch.no_grad():
                    assert model(torch.randn(2, in_chans, side, side)).shape == (2, 10)
                continue
            _train_step(model, side, in_chans)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_minimum_input_size_is_tight(name: str) -> None:
    """At the declared minimum the network runs; one pixel less, the raw layers fail."""
    with torch.device("meta"):
        model = cnnzoo.create_model(name).eval()
    side = model.min_input_size
    if model.fixed_input_size or side <= 1:
        return
    with torch.no_grad():
        model(torch.randn(1, 3, side, side, device="meta"))
        x = torch.randn(1, 3, side - 1, side - 1, device="meta")
        with pytest.raises(ValueError, match=rf"{name} needs inputs of at least {side}x{side}"):
            model(x)
        with pytest.raises(RuntimeError):
            out = model.forward_head(model.forward_features(x))
            if out.numel() == 0 or out.shape[-1] != 1000:
                raise RuntimeError("empty output")


@pytest.mark.parametrize("name", ALL_MODELS)
def test_uniform_api(name: str) -> None:
    with torch.device("meta"):
        model = cnnzoo.create_model(name, num_classes=7, in_chans=1)
    cfg = model.default_cfg
    assert cfg["name"] == name and cfg["num_classes"] == 7
    assert cfg["input_size"][0] == 1 and len(cfg["mean"]) == len(cfg["std"]) == 1
    assert model.get_submodule(cfg["first_conv"]).in_channels == 1
    assert model.get_classifier().out_features == 7
    side = comparison_side(model)
    x = torch.randn(2, 1, side, side, device="meta")
    model.eval()
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    assert model.forward_head(features).shape == (2, 7)
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model.num_classes == 3
    assert model(x).shape == (2, 3)


def test_model_info_describes_the_model() -> None:
    info = cnnzoo.model_info("resnet50")
    assert info.family == "resnet" and info.paper.arxiv == "1512.03385"
    assert info.params == 25_557_032 and info.input_size == (3, 224, 224)
    assert info.imagenet_top1 == pytest.approx(80.858)
    assert cnnzoo.model_info("resnet20").imagenet_top1 is None


def test_list_models_filters_by_pattern() -> None:
    assert cnnzoo.list_models("resnet1*") == [n for n in ALL_MODELS if n.startswith("resnet1")]
    assert "vgg16_bn" in cnnzoo.list_models("vgg*_bn") and "vgg16" not in cnnzoo.list_models("*_bn")


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet5'.*resnet50"):
        cnnzoo.create_model("resnet5")


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"num_classes": -3}, {"in_chans": 0}])
def test_impossible_head_or_stem_sizes_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be a positive integer"):
        cnnzoo.create_model("resnet18", **kwargs)


def test_too_small_input_names_model_minimum_and_remedy() -> None:
    model = cnnzoo.create_model("alexnet", num_classes=10).eval()
    with pytest.raises(ValueError, match=r"alexnet needs inputs of at least 63x63.*resize"):
        model(torch.randn(1, 3, 32, 32))
    vgg = cnnzoo.create_model("vgg11", num_classes=10).eval()
    with pytest.raises(ValueError, match="small_input=True"):
        vgg(torch.randn(1, 3, 28, 28))


def test_wrong_channel_count_is_explained() -> None:
    model = cnnzoo.create_model("resnet18", num_classes=10, in_chans=1).eval()
    with pytest.raises(ValueError, match="built for 1-channel images, got 3"):
        model(torch.randn(1, 3, 32, 32))


def test_small_input_resnet_keeps_resolution_for_cifar_sized_images() -> None:
    model = cnnzoo.create_model("resnet18", num_classes=10, small_input=True).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 4, 4)
    standard = cnnzoo.create_model("resnet18", num_classes=10).eval()
    with torch.no_grad():
        assert standard.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 1, 1)
