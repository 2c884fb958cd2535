"""Explanations: Grad-CAM and friends localise a learnt cue; the CLI writes legible PNGs and
turns bad requests into one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cnnzoo.analysis.explain import (
    AttributionOptions,
    LayerGradCamPlusPlus,
    attribution_maps,
    gradcam_maps,
    place_on_input,
)
from cnnzoo.analysis.featuremaps import resolve_stages, stage_maps, stage_maps_figure
from cnnzoo.analysis.receptive_field import receptive_field
from cnnzoo.cli.main import main
from cnnzoo.errors import UsageError
from cnnzoo.models.resnet_cifar import CifarResNet
from cnnzoo.registry import create_model
from cnnzoo.weights import save_weights

# --- the synthetic task ---------------------------------------------------------------------

SIDE, PATCH = 32, 12
QUADRANTS = ["top-left", "top-right", "bottom-left", "bottom-right"]


def patch_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose class is the quadrant holding the bright 12x12 patch.

    Every quadrant holds a patch at a random place in it; the other three are dim (0.45 on a
    0-0.2 noise background), so that the class is decided only by where the bright one sits,
    not by which quadrants are empty. Two more channels hold the row and column coordinates
    (the same in every image): a network that pools globally has no other local way to know
    where a patch is (Liu et al. 2018, "CoordConv"). Returns images in [0, 1], classes and
    the bright patch's (row, col) corner.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(count, 1, SIDE, SIDE, generator=gen) * 0.2
    classes = torch.randint(0, 4, (count,), generator=gen)
    half = SIDE // 2
    offsets = torch.randint(0, half - PATCH + 1, (count, 4, 2), generator=gen)
    corners = torch.zeros(count, 2, dtype=torch.long)
    for i in range(count):
        for quadrant in range(4):
            top = (quadrant // 2) * half + int(offsets[i, quadrant, 0])
            left = (quadrant % 2) * half + int(offsets[i, quadrant, 1])
            bright = quadrant == int(classes[i])
            x[i, 0, top : top + PATCH, left : left + PATCH] = 1.0 if bright else 0.45
            if bright:
                corners[i] = torch.tensor([top, left])
    ramp = torch.linspace(0.0, 1.0, SIDE)
    rows = ramp.view(1, 1, SIDE, 1).expand(count, 1, SIDE, SIDE)
    cols = ramp.view(1, 1, 1, SIDE).expand(count, 1, SIDE, SIDE)
    return torch.cat([x, rows, cols], dim=1), classes, corners


def normalise(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1


@pytest.fixture(scope="module")
def patch_model() -> CifarResNet:
    """An 8-layer CIFAR ResNet (one block per stage), 150 Adam steps of 64 images."""
    torch.manual_seed(0)
    model = CifarResNet(1, num_classes=4, in_chans=3)
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    for step in range(150):
        x, y, _ = patch_images(64, seed=1000 + step)
        loss = F.cross_entropy(model(normalise(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def hit_rate(maps: torch.Tensor, corners: torch.Tensor) -> float:
    """Share of images whose map has its maximum inside the bright patch."""
    flat = maps.flatten(1).argmax(dim=1)
    rows, cols = flat // maps.shape[-1], flat % maps.shape[-1]
    inside = (
        (rows >= corners[:, 0])
        & (rows < corners[:, 0] + PATCH)
        & (cols >= corners[:, 1])
        & (cols < corners[:, 1] + PATCH)
    )
    return float(inside.float().mean())


def test_the_model_learnt_the_task(patch_model: CifarResNet) -> None:
    x, y, _ = patch_images(200, seed=1)
    with torch.no_grad():
        accuracy = (patch_model(normalise(x)).argmax(1) == y).float().mean()
    assert accuracy >= 0.97


def test_gradcam_peaks_inside_the_patch(patch_model: CifarResNet) -> None:
    """The maximum of the Grad-CAM map of the true class (default layer: layer3, 8x8 units
    4 px apart) falls inside the bright patch in >= 90 % of 200 test images (measured: 100 %;
    without the coordinate channels the network spreads its evidence and it is 0 %)."""
    x, y, corners = patch_images(200, seed=1)
    maps = gradcam_maps(patch_model, normalise(x), y)
    assert maps.shape == (200, SIDE, SIDE)
    assert float(maps.min()) >= 0.0 and torch.allclose(maps.flatten(1).amax(1), torch.ones(200))
    assert hit_rate(maps, corners) >= 0.90


def test_gradcam_plus_plus_peaks_inside_the_patch(patch_model: CifarResNet) -> None:
    x, y, corners = patch_images(200, seed=1)
    maps = attribution_maps(patch_model, normalise(x), y, "gradcam++")
    assert hit_rate(maps, corners) >= 0.90


def _image_only_baseline() -> torch.Tensor:
    """Occlude / integrate over the image channel only: black there, the coordinates kept."""
    x, _, _ = patch_images(1, seed=0)
    baseline = normalise(x[0]).clone()
    baseline[0] = normalise(torch.zeros(()))
    return baseline


def test_occlusion_peaks_inside_the_patch(patch_model: CifarResNet) -> None:
    """The default window (5 px for 32 px images, stride 2): 100 % of 30 images measured.
    (A coarser 8 px window with stride 4 blurs the map past the patch's edge: 84 %.)"""
    x, y, corners = patch_images(30, seed=1)
    options = AttributionOptions(baseline=_image_only_baseline())
    maps = attribution_maps(patch_model, normalise(x), y, "occlusion", options=options)
    assert maps.shape == (30, SIDE, SIDE)
    assert hit_rate(maps, corners) >= 0.90


def test_integrated_gradients_peak_inside_the_patch(patch_model: CifarResNet) -> None:
    x, y, corners = patch_images(50, seed=1)
    options = AttributionOptions(steps=16, baseline=_image_only_baseline())
    maps = attribution_maps(patch_model, normalise(x), y, "integrated-gradients", options=options)
    assert hit_rate(maps, corners) >= 0.90


# --- the parts cnnzoo adds ------------------------------------------------------------------


def test_maps_land_on_receptive_field_centres() -> None:
    """A single hot unit of LeNet-5's S4 map (5x5, jump 4, field 16 px from pixel 4u) peaks at
    its field's centre, 4u + 7.5; stretching the map would put it at (u + 0.5) * 32/5."""
    axes = receptive_field(create_model("lenet5"), (1, 32, 32))["relu2"].field.axes
    coarse = torch.zeros(1, 1, 5, 5)
    coarse[0, 0, 1, 3] = 1.0
    placed = place_on_input(coarse, (32, 32), axes)[0, 0]
    assert placed[11, 19] == placed[12, 20] == placed.max()  # centre (11.5, 19.5)
    assert placed[11, 19] == pytest.approx(0.875**2)  # half a pixel from the centre: bilinear
    stretched = place_on_input(coarse, (32, 32))[0, 0]
    peak = divmod(int(stretched.argmax()), 32)
    assert peak in {(9, 22), (9, 21)}  # centre (1.5 * 6.4, 3.5 * 6.4) = (9.6, 22.4)


class GlobalPoolHead(nn.Module):
    """Two-channel maps A -> mean over positions -> fixed linear scores (for Grad-CAM++)."""

    def __init__(self) -> None:
        super().__init__()
        self.maps = nn.Identity()
        self.register_buffer("weights", torch.tensor([[2.0, -1.0], [0.5, 3.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps(x).mean(dim=(2, 3)) @ self.weights.T


def test_gradcam_plus_plus_weights_by_hand() -> None:
    """Scores S_c = sum_k v_ck mean(A_k): the gradient is g_k = v_ck / (h w) everywhere, so
    alpha_k = g_k^2 / (2 g_k^2 + sum(A_k) g_k^3) and w_k = (h w) alpha_k relu(g_k)."""
    torch.manual_seed(0)
    acts = torch.rand(1, 2, 3, 4) + 0.1
    model = GlobalPoolHead()
    cam = LayerGradCamPlusPlus(model, model.maps).attribute(acts.clone(), target=0)
    area = 12
    expected = torch.zeros(3, 4)
    for k, v in enumerate(model.weights[0].tolist()):
        g = v / area
        alpha = g * g / (2 * g * g + float(acts[0, k].sum()) * g**3)
        expected += area * alpha * max(g, 0.0) * acts[0, k]
    torch.testing.assert_close(cam[0, 0], F.relu(expected))


def test_gradcam_needs_a_spatial_layer() -> None:
    model = create_model("lenet5").eval()
    x = torch.randn(2, 1, 32, 32)
    with pytest.raises(UsageError, match="conv3 gives a 1x1 map.*relu1, relu2"):
        attribution_maps(model, x, [0, 1], "gradcam", layer="conv3")
    with pytest.raises(UsageError, match="fc1 gives shape"):
        attribution_maps(model, x, [0, 1], "gradcam", layer="fc1")
    with pytest.raises(UsageError, match="no layer 'relu9' in lenet5; did you mean relu"):
        attribution_maps(model, x, [0, 1], "gradcam", layer="relu9")
    with pytest.raises(UsageError, match="--layer applies to gradcam and gradcam\\+\\+"):
        attribution_maps(model, x, [0, 1], "occlusion", layer="relu1")


def test_stage_maps_and_their_figure() -> None:
    model = create_model("lenet5").eval()
    info = model.feature_info
    assert resolve_stages(info, ["relu2"]) == (1,) and resolve_stages(info, ["-1", "0"]) == (0, 1)
    with pytest.raises(UsageError, match="no stage 'conv9'; stages: relu1, relu2"):
        resolve_stages(info, ["conv9"])
    maps = stage_maps(model, torch.randn(1, 1, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(1, 6, 14, 14), (1, 16, 5, 5)]
    fig = stage_maps_figure(maps, info, count=4)
    titles = [ax.get_title() for ax in fig.axes]
    assert any("relu2" in t for t in titles) and sum(t.startswith("ch ") for t in titles) == 8
    assert sum(ax.get_ylabel() == "activation" for ax in fig.axes) == 2  # a colour bar per row


# --- the command line -----------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def patch_run(patch_model: CifarResNet, tmp_path_factory: pytest.TempPathFactory):
    """The trained model as a run directory, and three test images as PNG files."""
    root = tmp_path_factory.mktemp("explain")
    run_dir = root / "run"
    torch.manual_seed(0)
    registered = create_model("resnet20", num_classes=4, in_chans=3)
    save_weights(registered, run_dir / "best.safetensors")
    config = {"model": "resnet20", "num_classes": 4, "in_chans": 3, "class_names": QUADRANTS}
    (run_dir / "config.json").write_text(json.dumps(config))
    x, _, _ = patch_images(3, seed=7)
    paths = []
    for i in range(3):
        path = root / f"image{i}.png"
        Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return run_dir, paths


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("gradcam", []),
        ("gradcam++", ["--layer", "layer2"]),
        ("integrated-gradients", ["--steps", "4"]),
        ("occlusion", ["--window", "8"]),
    ],
)
def test_explain_writes_one_png_per_image(
    capsys: pytest.CaptureFixture[str], patch_run, tmp_path, method: str, extra: list[str]
) -> None:
    run_dir, images = patch_run
    code, out, err = run(
        capsys, "explain", run_dir, *images[:2], "--method", method, "--out", tmp_path, *extra
    )
    assert code == 0, err
    written = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in written] == [
        f"image{i}_{method.replace('+', 'p')}.png" for i in range(2)
    ]
    assert all(name in out for name in ("image0.png", "->")) and "p = " in out
    with Image.open(written[0]) as png:
        assert png.size == (1350, 440)


def test_explain_target_class_by_name(
    capsys: pytest.CaptureFixture[str], patch_run, tmp_path
) -> None:
    run_dir, images = patch_run
    code, out, _ = run(
        capsys, "explain", run_dir, images[0], "--target", "bottom-left", "--out", tmp_path
    )
    assert code == 0 and "bottom-left (p = " in out


def test_features_and_filters_commands(
    capsys: pytest.CaptureFixture[str], patch_run, tmp_path
) -> None:
    run_dir, images = patch_run
    code, out, err = run(
        capsys, "features", run_dir, images[0], "--stages", "0", "-1", "--out", tmp_path
    )
    assert code == 0, err
    assert (tmp_path / "image0_features.png").is_file() and "2 stages" in out
    code, out, err = run(capsys, "filters", "alexnet", "--out", tmp_path / "k.png")
    assert code == 0 and (tmp_path / "k.png").is_file() and "64 kernels of features.0" in out
    assert "untrained weights" in err


@pytest.mark.parametrize(
    ("argv", "status", "needle"),
    [
        (["--layer", "layer9"], 2, "no layer 'layer9' in resnet20; did you mean layer"),
        (["--layer", "fc"], 2, "gradcam needs a layer with spatial maps, and fc gives shape"),
        (["--method", "occlusion", "--layer", "layer3"], 2, "--layer applies to gradcam"),
        (["--target", "middle"], 2, "--target 'middle' is not a class of this model"),
        (["--method", "occlusion", "--window", "99"], 2, "window (99 px) is larger"),
    ],
)
def test_bad_explain_requests_are_one_line(
    capsys: pytest.CaptureFixture[str], patch_run, tmp_path, argv, status, needle
) -> None:
    run_dir, images = patch_run
    code, out, err = run(capsys, "explain", run_dir, images[0], "--out", tmp_path, *argv)
    assert code == status
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.png"))


def test_unreadable_and_missing_images(capsys: pytest.CaptureFixture[str], patch_run, tmp_path):
    run_dir, _ = patch_run
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    code, _, err = run(capsys, "explain", run_dir, broken, "--out", tmp_path / "out")
    assert code == 1 and "broken.png: not a readable image" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "features", run_dir, tmp_path / "nope.png", "--out", tmp_path)
    assert code == 2 and "nope.png: no such image file" in err
    code, _, err = run(capsys, "filters", tmp_path / "no_run", "--out", tmp_path)
    assert code == 1 and "no such run directory" in err  # as predict and evaluate say it
