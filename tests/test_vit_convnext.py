"""Vision Transformer and ConvNeXt: torchvision's checkpoints (old and new keys, other image
sizes, SWAG's sides), and every zoo feature where the transformer differs from a CNN: token
maps, attention in MACs and receptive fields, Grad-CAM on tokens, attention rollout, training
from weights with a frozen backbone."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT
from torchvision.models.vision_transformer import interpolate_embeddings

import cnnzoo
from cnnzoo import pretrained
from cnnzoo.analysis.explain import attention_rollout, attribution_maps, place_on_input
from cnnzoo.analysis.flops import count_macs, profile_macs
from cnnzoo.analysis.receptive_field import receptive_field
from cnnzoo.analysis.summary import summary
from cnnzoo.cli.main import main
from cnnzoo.errors import UsageError
from cnnzoo.models.features import feature_extractor, tokens_to_map
from cnnzoo.models.vit import VisionTransformer
from cnnzoo.pretrained import WeightSpec, cache_dir, get_weight_spec, register_weights
from cnnzoo.train.planning import plan_input
from cnnzoo.weights import load_weights, save_weights

SMALL = dict(patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)


def small_pair(image_size: int = 64) -> tuple[TorchvisionViT, VisionTransformer]:
    """torchvision's ViT and the zoo's, same small configuration, random weights (head too)."""
    torch.manual_seed(0)
    theirs = TorchvisionViT(image_size=image_size, num_classes=10, **SMALL).eval()
    nn.init.normal_(theirs.heads.head.weight, std=0.5)
    ours = VisionTransformer(image_size, num_classes=10, **SMALL).eval()
    return theirs, ours


def legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MLP keys torchvision wrote before its version 2: mlp.linear_1 / mlp.linear_2."""
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"mlp\.0\.", "mlp.linear_1.", key)
        renamed[re.sub(r"mlp\.3\.", "mlp.linear_2.", key)] = value
    return renamed


# --- torchvision's checkpoints ----------------------------------------------------------------


@pytest.mark.parametrize("keys", ["current", "legacy"])
def test_torchvision_state_dict_loads_strictly_with_old_and_new_mlp_keys(keys: str) -> None:
    theirs, ours = small_pair()
    state = theirs.state_dict()
    if keys == "legacy":
        state = legacy_keys(state)
        assert any("linear_1" in key for key in state)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = theirs(x)
        assert expected.abs().max() > 0.1  # a head that is not zero: the comparison means it
        assert (ours(x) - expected).abs().max() <= 1e-5
    # cnnzoo.load_weights (files, named weights) takes the old keys too, and says so.
    fresh = small_pair()[1]
    report = load_weights(fresh, state)
    assert report.ok and ("encoder.layers.*.mlp" in report.adapted) is (keys == "legacy")


def test_position_embeddings_are_interpolated_as_torchvision_does() -> None:
    theirs, _ = small_pair(64)
    ours = VisionTransformer(96, num_classes=10, **SMALL)
    report = load_weights(ours, theirs.state_dict())
    expected = interpolate_embeddings(96, 16, dict(theirs.state_dict()))["encoder.pos_embedding"]
    assert torch.equal(ours.encoder.pos_embedding.detach(), expected)
    assert ours.encoder.pos_embedding.shape == (1, 37, 32)  # 6x6 patches + the class token
    assert "4x4 patch grid" in report.adapted["encoder.pos_embedding"]
    with torch.no_grad():
        assert ours.eval()(torch.randn(1, 3, 96, 96)).shape == (1, 10)


def test_swag_weights_build_the_model_at_their_own_side() -> None:
    """SWAG's end-to-end weights are made at 384 / 512 / 518 px: the model is built there (as
    torchvision's builder does), with its transform, and has exactly the weights' tensors."""
    from torchvision.models import get_model_weights

    for model, name, side in [
        ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", 384),
        ("vit_l_16", "IMAGENET1K_SWAG_E2E_V1", 512),
        ("vit_h_14", "DEFAULT", 518),
        ("vit_h_14", "IMAGENET1K_SWAG_LINEAR_V1", 224),
    ]:
        spec = get_weight_spec(model, name)
        assert spec.model_kwargs == {"image_size": side}
        assert (spec.crop_size, spec.interpolation) == (side, "bicubic")
        image = torch.zeros(3, 600, 700, dtype=torch.uint8)
        assert tuple(spec.transforms()(image).shape) == (3, side, side)
        classes, chans, options = spec.build_options(None, None, {})
        with torch.device("meta"):
            built = cnnzoo.create_model(model, num_classes=classes, in_chans=chans, **options)
        meta = spec.torchvision_weights.meta
        assert sum(p.numel() for p in built.parameters()) == meta["num_params"]
        assert built.fixed_input_size == side
        assert count_macs(built) == pytest.approx(meta["_ops"] * 1e9, abs=0.0005e9)
    assert len(list(get_model_weights("vit_h_14"))) == 2


@pytest.fixture
def cached_vit_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WeightSpec:
    """Named weights for vit_cifar_4 made at 16 px, already in a private torch hub cache (a
    cached file is trusted by its name: nothing is downloaded)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(pretrained, "_REGISTERED", {})
    torch.manual_seed(1)
    model = cnnzoo.create_model("vit_cifar_4", num_classes=10, image_size=16)
    nn.init.normal_(model.heads.head.weight, std=0.2)
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    file_name = f"vit_cifar_4_small-{digest[:8]}.pth"
    cache_dir().mkdir(parents=True)
    path.rename(cache_dir() / file_name)
    spec = WeightSpec(
        model="vit_cifar_4", name="TINY_V1", source="torchvision", dataset="test",
        url=f"http://127.0.0.1:9/{file_name}", file_name=file_name, sha256=digest[:8],
        categories=tuple(str(i) for i in range(10)), num_classes=10, in_chans=3,
        crop_size=16, resize_size=16, interpolation="bicubic",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), model_kwargs={"image_size": 16},
    )  # fmt: skip
    register_weights(spec)
    return spec


def test_named_weights_at_their_side_and_interpolated_at_another(cached_vit_weights) -> None:
    same = cnnzoo.create_model("vit_cifar_4", weights="TINY_V1")
    assert same.fixed_input_size == 16 and same.encoder.pos_embedding.shape == (1, 17, 64)
    bigger = cnnzoo.create_model("vit_cifar_4", weights="TINY_V1", image_size=32)
    assert bigger.fixed_input_size == 32 and bigger.encoder.pos_embedding.shape == (1, 65, 64)
    state = {k: v for k, v in same.state_dict().items()}
    expected = interpolate_embeddings(32, 4, state)["encoder.pos_embedding"]
    assert torch.equal(bigger.encoder.pos_embedding.detach(), expected)
    assert torch.equal(bigger.conv_proj.weight, same.conv_proj.weight)


def test_train_from_named_weights_with_a_frozen_backbone(
    cached_vit_weights, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main([
        "train", "--model", "vit_cifar_4", "--weights", "TINY_V1", "--freeze", "backbone",
        "--dataset", "digits", "--epochs", "1", "--num-threads", "1", "-q", "-o", str(out),
    ])  # fmt: skip
    assert code == 0
    log = (out / "train.log").read_text()
    head = 64 * 10 + 10
    assert f"backbone frozen; {head:,} parameters train" in log
    assert "resizing batches from 8x8 to 16x16" in log  # the weights' side, not re-planned
    trained = load_file(str(out / "last.safetensors"))
    start = cnnzoo.create_model("vit_cifar_4", weights="TINY_V1", in_chans=1).state_dict()
    for key, value in start.items():
        if not key.startswith("heads."):
            assert torch.equal(trained[key], value), f"{key} moved while frozen"
    assert not torch.equal(trained["heads.head.weight"], start["heads.head.weight"])


def test_vit_is_built_for_the_datas_side_unless_weights_fix_it() -> None:
    kwargs, resize, note = plan_input("vit_cifar_4", 10, 1, (28, 28), {})
    assert (kwargs, resize) == ({"image_size": 28}, None) and "image_size=28" in note
    kwargs, resize, _ = plan_input("vit_b_16", 10, 1, (28, 28), {})
    assert (kwargs, resize) == ({"image_size": 32}, 32)  # the next multiple of the patch
    kwargs, resize, _ = plan_input("vit_b_16", 10, 1, (28, 28), {}, small_input=False)
    assert (kwargs, resize) == ({}, 224)  # starting from weights: their own side
    with pytest.raises(ValueError, match="not a multiple of the 4-px patches; use 28 or 32"):
        cnnzoo.create_model("vit_cifar_4", image_size=30)


# --- multiply-adds and receptive fields -------------------------------------------------------


def test_attention_matrix_products_are_counted_on_meta_and_cpu() -> None:
    per_block = 4 * 768 * 768 * 197 + 2 * 197 * 197 * 768  # projections + QK^T and AV
    with torch.device("meta"):
        big = cnnzoo.create_model("vit_b_16")
    by_module = profile_macs(big).by_module
    assert by_module["encoder.layers.encoder_layer_0.self_attention"] == per_block
    assert profile_macs(big).total == 17_563_828_224  # torchvision's 17.564 GFLOPS meta
    small = cnnzoo.create_model("vit_cifar_4")
    fastpath = torch.backends.mha.get_fastpath_enabled()
    assert count_macs(small, device="cpu") == count_macs(small) == 21_563_008
    assert torch.backends.mha.get_fastpath_enabled() == fastpath  # left as it was


def test_receptive_field_is_a_patch_then_the_whole_image() -> None:
    """cnnzoo's fields against the input pixels one token's output really depends on."""
    torch.manual_seed(0)
    model = cnnzoo.create_model("vit_cifar_4").eval()
    rf = receptive_field(model)
    before, after = "encoder.layers.encoder_layer_0.ln_1", "encoder.layers.encoder_layer_0"
    assert rf["conv_proj"].size == rf[before].size == (4, 4) and not rf[before].field.whole
    assert rf[after].size == (32, 32) and rf[after].field.whole
    assert rf[after].jump == (4.0, 4.0)  # tokens stay on their patches
    assert rf.attention_from == "encoder.layers.encoder_layer_0.self_attention"
    token = 1 + 2 * 8 + 5  # patch (2, 5): rows 8-11, columns 20-23
    for name, rows, cols in [(before, (8, 11), (20, 23)), (after, (0, 31), (0, 31))]:
        x = torch.randn(1, 3, 32, 32, requires_grad=True)
        captured: list[torch.Tensor] = []
        handle = model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, keep=captured: keep.append(out)
        )
        model(x)
        handle.remove()
        # A random mix of the channels: a layer norm's outputs sum to a constant.
        (captured[0][0, token] * torch.randn(64)).sum().backward()
        reach = x.grad[0].abs().sum(0) > 0
        found_rows = torch.nonzero(reach.any(1)).flatten()
        found_cols = torch.nonzero(reach.any(0)).flatten()
        assert (int(found_rows[0]), int(found_rows[-1])) == rows
        assert (int(found_cols[0]), int(found_cols[-1])) == cols
        assert int(reach.sum()) == (rows[1] - rows[0] + 1) * (cols[1] - cols[0] + 1)
    axis = rf[before].field.axes[0]
    assert (axis.lo + 2 * axis.jump, axis.hi + 2 * axis.jump) == (8, 11)


def test_summary_shows_patch_and_whole_image_fields() -> None:
    text = str(summary(cnnzoo.create_model("vit_cifar_4"), depth=3))
    assert re.search(r"conv_proj\s+Conv2d\s+\[1, 64, 8, 8\]\s+4\s+4\s+3,136\s+196,608", text)
    assert re.search(r"encoder_layer_0\s+EncoderBlock\s+\[1, 65, 64\]\s+32 \(all\)\s+4", text)
    assert re.search(r"Receptive field \(encoder\.ln\)\s+32 px, the whole image", text)
    assert "from encoder.layers.encoder_layer_0.self_attention on" in text


def test_summary_and_export_build_a_vit_for_the_asked_side(tmp_path: Path, capsys) -> None:
    assert main(["summary", "vit_b_16", "--input-size", "3x64x64"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"Receptive field \(encoder\.ln\)\s+64 px, the whole image", text)
    assert main(["summary", "vit_b_16", "--input-size", "60"]) == 2
    assert "not a multiple of the 16-px patches; use 48 or 64" in capsys.readouterr().err
    assert main(["summary", "vit_b_16", "--input-size", "64x32"]) == 2
    assert "takes square images" in capsys.readouterr().err
    out = tmp_path / "vit.onnx"
    assert main(["export", "vit_cifar_4", str(out), "--format", "onnx",
                 "--input-size", "1x16x16"]) == 0
    import onnx

    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 16, 16]


def test_convnext_fields_follow_its_channels_last_blocks() -> None:
    with torch.device("meta"):
        model = cnnzoo.create_model("convnext_tiny")
    rf = receptive_field(model)
    # Stem 4 px (jump 4), then each 7x7 depthwise conv adds 6 units of 4 px.
    assert rf["features.0"].size == (4, 4)
    assert [rf[f"features.1.{i}"].size[0] for i in range(3)] == [28, 52, 76]
    assert rf["features.1.0.block.3"].size == (28, 28)  # the per-pixel MLP, channels-last
    assert rf["features.2"].size == (80, 80) and rf["features.2"].jump == (8.0, 8.0)
    assert rf.total.name == "features.7" and rf.total.jump == (32.0, 32.0)


# --- feature maps and explanations ------------------------------------------------------------


def test_token_maps_are_the_patches_in_place() -> None:
    torch.manual_seed(0)
    model = cnnzoo.create_model("vit_cifar_4").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        patches = model.conv_proj(x)
        tokens = torch.cat([model.class_token.expand(2, -1, -1),
                            patches.flatten(2).transpose(1, 2)], 1)  # fmt: skip
        assert torch.equal(tokens_to_map(tokens, 1), patches)
        maps = feature_extractor(model, (0, -1))(x)
        encoded = model.forward_features(x)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 8, 8), (2, 64, 8, 8)]
    assert torch.equal(maps[-1], tokens_to_map(encoded, 1))
    backbone = cnnzoo.create_model("vit_cifar_4", features_only=True)
    result = backbone.load_state_dict(model.state_dict(), strict=False)
    assert result.missing_keys == [] and all(k.startswith("heads") for k in result.unexpected_keys)


def test_gradcam_reads_tokens_as_maps_at_the_last_attentions_input() -> None:
    torch.manual_seed(0)
    model = cnnzoo.create_model("vit_cifar_4").eval()
    nn.init.normal_(model.heads.head.weight, std=0.5)
    x = torch.randn(2, 3, 32, 32)
    layer = "encoder.layers.encoder_layer_7.ln_1"
    # The oracle: Grad-CAM by hand on the layer's patch tokens.
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        out.retain_grad()
        captured.append(out)

    handle = model.get_submodule(layer).register_forward_hook(keep)
    model(x)[torch.arange(2), torch.tensor([3, 7])].sum().backward()
    handle.remove()
    tokens, grads = captured[0][:, 1:], captured[0].grad[:, 1:]
    weights = grads.mean(dim=1, keepdim=True)  # (N, 1, C): mean over positions
    cam = torch.relu((weights * tokens).sum(-1)).reshape(2, 1, 8, 8).detach()
    axes = receptive_field(model, (3, 32, 32))[layer].field.axes
    expected = place_on_input(cam, (32, 32), axes)[:, 0]
    expected = expected / expected.flatten(1).amax(1)[:, None, None]
    got = attribution_maps(model, x, [3, 7], "gradcam")  # the default layer
    assert torch.allclose(got, expected, atol=1e-5)
    # After the last attention the patch tokens never reach the class token: Grad-CAM there
    # is zero, which is why it is not the default.
    last = attribution_maps(model, x, [3, 7], "gradcam", layer="encoder.layers.encoder_layer_7")
    assert float(last.max()) == 0.0


def test_attention_rollout_finds_the_patch_attention_is_drawn_to() -> None:
    """One block whose class token attends to bright patches: the rollout peaks on the one
    bright patch of each image, wherever it is."""
    torch.manual_seed(0)
    model = VisionTransformer(32, 4, 1, 1, 8, 16, num_classes=2).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.conv_proj.weight[0].fill_(1.0 / 48)  # channel 0: the patch's mean brightness
        model.conv_proj.bias[1] = 1.0  # channel 1: a constant, so layer norm keeps contrast
        block = model.encoder.layers.encoder_layer_0
        block.ln_1.weight.fill_(1.0)
        attention = block.self_attention
        attention.in_proj_bias[0] = 1.0  # every query: the same direction ...
        attention.in_proj_weight[8, 0] = 20.0  # ... matched by a bright patch's key
    images, corners = torch.zeros(4, 3, 32, 32), [(0, 0), (8, 20), (24, 4), (28, 28)]
    for image, (row, col) in zip(images, corners, strict=True):
        image[:, row : row + 4, col : col + 4] = 1.0
    heat = attention_rollout(model, images)
    assert heat.shape == (4, 32, 32)
    for map_, (row, col) in zip(heat, corners, strict=True):
        peak = divmod(int(map_.argmax()), 32)
        assert row <= peak[0] < row + 4 and col <= peak[1] < col + 4
    with pytest.raises(UsageError, match="attention-rollout needs a Vision Transformer"):
        attribution_maps(cnnzoo.create_model("resnet20"), images, [0] * 4, "attention-rollout")


def test_explain_command_with_rollout_and_gradcam(tmp_path: Path, capsys) -> None:
    from PIL import Image

    weights = tmp_path / "vit.safetensors"
    save_weights(cnnzoo.create_model("vit_cifar_4", num_classes=10), weights)
    image = tmp_path / "img.png"
    Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(image)
    for method in ("attention-rollout", "gradcam"):
        code = main(["explain", "vit_cifar_4", "--weights", str(weights), str(image),
                     "--method", method, "--out", str(tmp_path / "out")])  # fmt: skip
        assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "img_attention-rollout.png", "img_gradcam.png",
    ]  # fmt: skip
    capsys.readouterr()
    code = main(["explain", "resnet20", str(image), "--method", "attention-rollout",
                 "--out", str(tmp_path / "cnn")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("cnnzoo explain: error: attention-rollout needs a Vis")


def test_small_models_have_resnet20s_size_and_torchvision_layouts() -> None:
    """The data-efficiency experiment's contestants: within 15 % of ResNet-20's parameters."""
    from cnnzoo.registry import count_params

    resnet20 = count_params("resnet20")
    for name in ("vit_cifar_4", "convnext_cifar"):
        assert abs(count_params(name) - resnet20) <= 0.15 * resnet20
    small = cnnzoo.create_model("convnext_cifar").eval()
    with torch.no_grad():
        maps = feature_extractor(small)(torch.randn(1, 3, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(24, 16, 16), (48, 8, 8), (96, 4, 4)]
    # Its blocks are torchvision's: a ConvNeXt-T block's weights fit one of its own width.
    reference = torchvision.models.convnext_tiny().features[1][0]
    mine = cnnzoo.create_model("convnext_tiny").features[1][0]
    mine.load_state_dict(reference.state_dict(), strict=True)
