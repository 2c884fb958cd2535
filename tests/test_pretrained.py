"""Weights by name: torchvision's registry, the shared cache, downloads and every way they fail.

No test touches the internet: a local HTTP server on 127.0.0.1 serves a state-dict made from a
randomly initialised torchvision ResNet-18, and ``register_weights`` points resnet18's
IMAGENET1K_V1 at it (a file name carrying that file's own sha256 prefix, so the hash check runs
exactly as it does for download.pytorch.org).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.server
import io
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

import cnnzoo
from cnnzoo import create_model, pretrained
from cnnzoo.cli.main import main
from cnnzoo.errors import CnnzooError, UsageError, WeightsError
from cnnzoo.pretrained import (
    WeightSpec,
    cache_dir,
    get_weight_spec,
    is_cached,
    list_weights,
    register_weights,
    weights_file,
)
from cnnzoo.registry import get_entry, list_models

# --- a local weights server -------------------------------------------------------------------


class WeightsServer:
    """Serves bytes by path on 127.0.0.1 and counts requests; ``cut`` sends only that many."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.cut: int | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if server.cut is None else body[: server.cut])

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that stops reading (the full-disk test) is expected here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def tv_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval().state_dict()


@pytest.fixture(scope="module")
def state_bytes(tv_state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(tv_state, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server() -> Iterator[WeightsServer]:
    served = WeightsServer()
    yield served
    served.close()


@pytest.fixture(autouse=True)
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty torch hub cache; online mode; no weights registered by other tests."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("no_proxy", "*")  # the local server is reached directly, proxy or not
    monkeypatch.delenv(pretrained.OFFLINE_ENV, raising=False)
    monkeypatch.setattr(pretrained, "_REGISTERED", {})
    return home


@pytest.fixture
def served_spec(server: WeightsServer, state_bytes: bytes) -> WeightSpec:
    """resnet18's IMAGENET1K_V1, served locally under a name carrying the file's hash prefix."""
    server.requests.clear()
    server.cut = None
    digest = hashlib.sha256(state_bytes).hexdigest()
    file_name = f"resnet18-{digest[:8]}.pth"
    server.files = {f"/models/{file_name}": state_bytes}
    spec = dataclasses.replace(
        get_weight_spec("resnet18", "IMAGENET1K_V1"),
        url=server.url(f"/models/{file_name}"),
        file_name=file_name,
        sha256=digest[:8],
    )
    register_weights(spec, replace=True)
    return spec


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Any attempt to open a connection is recorded and fails."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object, *args: object) -> None:
        attempts.append(address)
        raise OSError("the test forbids network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cache_listing() -> list[str]:
    folder = cache_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- torchvision's registry -------------------------------------------------------------------


def test_every_torchvision_weight_of_every_zoo_model_is_listed() -> None:
    from torchvision.models import get_model_weights

    listed = {(spec.model, spec.name) for spec in list_weights() if spec.source == "torchvision"}
    expected = set()
    for model in list_models():
        tv_name = get_entry(model).torchvision_name
        if tv_name:
            expected |= {(model, weights.name) for weights in get_model_weights(tv_name)}
    assert listed == expected
    assert len(expected) >= 45 and ("resnet50", "IMAGENET1K_V2") in listed
    for spec in list_weights():
        if spec.source != "torchvision":
            continue
        # The file name torch hub downloads to carries the sha256 prefix the download must match.
        assert spec.file_name == spec.url.rsplit("/", 1)[-1]
        assert len(spec.sha256) >= 8 and f"-{spec.sha256}." in spec.file_name


def test_spec_fields_come_from_the_weights_enum() -> None:
    from torchvision.models import ResNet50_Weights

    spec = get_weight_spec("resnet50", "IMAGENET1K_V2")
    assert spec.url == ResNet50_Weights.IMAGENET1K_V2.url
    assert spec.file_name == "resnet50-11ad3fa6.pth" and spec.sha256 == "11ad3fa6"
    assert spec.metrics == {"acc@1": 80.858, "acc@5": 95.434}
    assert spec.crop_size == 224 and spec.resize_size == 232 and spec.interpolation == "bilinear"
    assert spec.categories[0] == "tench" and len(spec.categories) == spec.num_classes == 1000
    assert spec.mean == (0.485, 0.456, 0.406) and spec.in_chans == 3
    assert 97 * 2**20 < spec.file_size < 99 * 2**20
    assert repr(spec.transforms()) == repr(ResNet50_Weights.IMAGENET1K_V2.transforms())
    effnet = get_weight_spec("efficientnet_b7", "DEFAULT")
    assert (effnet.crop_size, effnet.resize_size, effnet.interpolation) == (600, 600, "bicubic")
    features = get_weight_spec("vgg16", "IMAGENET1K_FEATURES")  # no classifier metrics: NaN
    assert features.metrics == {} and features.categories == ()


def test_names_aliases_and_torchvision_spellings_resolve() -> None:
    from torchvision.models import ResNet50_Weights

    def name(model: str, weights: object) -> str:
        return get_weight_spec(model, weights).name

    assert name("resnet50", "DEFAULT") == "IMAGENET1K_V2"
    assert name("resnet50", "imagenet") == "IMAGENET1K_V2"  # Keras' word
    assert name("resnet50", "imagenet1k_v1") == "IMAGENET1K_V1"
    assert name("resnet50", "ResNet50_Weights.IMAGENET1K_V1") == "IMAGENET1K_V1"
    assert name("resnet50", ResNet50_Weights.IMAGENET1K_V1) == "IMAGENET1K_V1"
    assert name("resnet50", "resnet50.IMAGENET1K_V1") == "IMAGENET1K_V1"
    assert name("vgg16", "imagenet") == "IMAGENET1K_V1"
    assert cnnzoo.list_weights("resnet50") == list_weights("resnet50")
    assert [s.name for s in list_weights("resnet50")] == ["IMAGENET1K_V1", "IMAGENET1K_V2"]
    batch_norm_vggs = {"vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"}
    assert {s.model for s in list_weights("vgg1?_bn")} == batch_norm_vggs


def test_unknown_and_foreign_names_are_usage_errors_listing_the_valid_ones() -> None:
    with pytest.raises(UsageError) as unknown:
        get_weight_spec("resnet50", "IMAGENET1K_V3")
    assert "resnet50" in str(unknown.value)
    assert "DEFAULT, imagenet, IMAGENET1K_V1, IMAGENET1K_V2" in str(unknown.value)
    for foreign in ("ResNet18_Weights.IMAGENET1K_V1", "resnet18.IMAGENET1K_V1"):
        with pytest.raises(UsageError, match="another architecture"):
            get_weight_spec("resnet50", foreign)
    from torchvision.models import ResNet18_Weights

    with pytest.raises(UsageError, match="another architecture"):
        create_model("resnet50", weights=ResNet18_Weights.IMAGENET1K_V1)
    with pytest.raises(UsageError, match="no pretrained weights for se_resnet50"):
        create_model("se_resnet50", weights="DEFAULT")
    with pytest.raises(UsageError, match="unknown model"):
        get_weight_spec("resnet5", "DEFAULT")


def test_cli_bad_weight_names_are_one_line_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = cli(capsys, "weights", "resnet50.IMAGENET1K_V9")
    line = one_error_line(err)
    assert code == 2 and "IMAGENET1K_V9" in line and "IMAGENET1K_V1, IMAGENET1K_V2" in line
    code, _, err = cli(capsys, "weights", "resnet50.ResNet18_Weights.IMAGENET1K_V1")
    assert code == 2 and "another architecture" in one_error_line(err)
    code, _, err = cli(capsys, "weights", "--download")
    assert code == 2 and "name what to download" in one_error_line(err)


# --- download, cache, offline -----------------------------------------------------------------


def test_first_use_downloads_into_the_cache_then_never_again(
    served_spec: WeightSpec,
    server: WeightsServer,
    tv_state: dict[str, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich draws its bar as on a terminal
    assert not is_cached(served_spec)
    model = create_model("resnet18", weights="IMAGENET1K_V1").eval()
    err = capfd.readouterr().err
    assert f"downloading {served_spec.url}" in err
    assert served_spec.file_name in err and "MB" in err  # the bar: name and bytes so far
    assert cache_listing() == [served_spec.file_name]  # under its name, no temporary left
    assert (cache_dir() / served_spec.file_name).read_bytes() == server.files[
        f"/models/{served_spec.file_name}"
    ]
    assert server.requests == [f"/models/{served_spec.file_name}"]
    assert is_cached(served_spec) and cache_dir() == Path(os.environ["TORCH_HOME"]) / "hub" / (
        "checkpoints"
    )

    # Same logits as torchvision's model holding the same state-dict.
    reference = torchvision.models.resnet18()
    reference.load_state_dict(tv_state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.eval()(x), rtol=0, atol=0)
    cfg = model.pretrained_cfg
    assert cfg["weights"] == "IMAGENET1K_V1" and cfg["source"] == "torchvision"
    assert cfg["categories"][:2] == ["tench", "goldfish"] and len(cfg["categories"]) == 1000
    assert (cfg["crop_size"], cfg["resize_size"], cfg["interpolation"]) == (224, 256, "bilinear")
    assert cfg["metrics"] == {"acc@1": 69.758, "acc@5": 89.078}

    again = create_model("resnet18", weights="DEFAULT").eval()
    assert server.requests == [f"/models/{served_spec.file_name}"]  # no second request
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_tampered_download_is_refused_and_removed(
    served_spec: WeightSpec,
    server: WeightsServer,
    state_bytes: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tampered = bytearray(state_bytes)
    tampered[len(tampered) // 2] ^= 0xFF
    server.files[f"/models/{served_spec.file_name}"] = bytes(tampered)
    with pytest.raises(WeightsError, match="does not match its sha256 prefix"):
        create_model("resnet18", weights="IMAGENET1K_V1")
    assert cache_listing() == []
    code, _, err = cli(capsys, "weights", "resnet18.IMAGENET1K_V1", "--download")
    line = one_error_line(err)
    assert code == 1 and "tampered" in line and served_spec.url in line
    assert cache_listing() == [] and len(server.requests) == 2


def test_offline_names_url_file_and_folder_and_opens_no_connection(
    served_spec: WeightSpec,
    server: WeightsServer,
    no_network: list[object],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = cli(capsys, "--offline", "weights", "resnet18.DEFAULT", "--download")
    line = one_error_line(err)
    assert code == 1 and "offline" in line
    assert served_spec.url in line
    assert f"save it as {served_spec.file_name} in {cache_dir()}" in line
    assert pretrained.OFFLINE_ENV not in os.environ  # --offline lasts one command
    monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")
    with pytest.raises(CnnzooError, match="offline"):
        create_model("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(CnnzooError, match="offline"):
        weights_file(served_spec)
    assert server.requests == [] and no_network == [] and cache_listing() == []


def test_no_network_names_url_file_and_folder(
    served_spec: WeightSpec, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "weights", "resnet18.IMAGENET1K_V1", "--download")
    line = one_error_line(err)
    assert code == 1 and no_network  # it tried, and failed
    assert line.startswith(f"cnnzoo weights: error: cannot download {served_spec.url}")
    assert f"save it as {served_spec.file_name} in {cache_dir()}" in line
    assert cache_listing() == []


def test_a_file_put_in_the_cache_by_hand_is_used_without_a_network(
    tv_state: dict[str, torch.Tensor], no_network: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = get_weight_spec("resnet18", "IMAGENET1K_V1")  # the real one, download.pytorch.org's
    cache_dir().mkdir(parents=True)
    torch.save(tv_state, cache_dir() / "resnet18-f37072fd.pth")
    assert is_cached(spec) and weights_file(spec) == cache_dir() / spec.file_name
    monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")
    model = create_model("resnet18", weights="imagenet").eval()
    reference = torchvision.models.resnet18()
    reference.load_state_dict(tv_state)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))
    assert no_network == []


def test_cached_file_of_another_architecture_or_corrupt_is_one_line_weights_error(
    tv_state: dict[str, torch.Tensor],
) -> None:
    cache_dir().mkdir(parents=True)
    torch.save(tv_state, cache_dir() / get_weight_spec("resnet34", "DEFAULT").file_name)
    with pytest.raises(WeightsError) as foreign:
        create_model("resnet34", weights="DEFAULT")
    assert "does not fit resnet34" in str(foreign.value) and "\n" not in str(foreign.value)
    corrupt = cache_dir() / get_weight_spec("resnet18", "DEFAULT").file_name
    corrupt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(WeightsError) as broken:
        create_model("resnet18", weights="DEFAULT")
    assert str(corrupt) in str(broken.value) and "\n" not in str(broken.value)


def test_download_cut_short_leaves_nothing(
    served_spec: WeightSpec,
    server: WeightsServer,
    state_bytes: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server.cut = len(state_bytes) // 3
    code, _, err = cli(capsys, "weights", "resnet18.IMAGENET1K_V1", "--download")
    line = one_error_line(err)
    assert code == 1 and served_spec.url in line and "nothing was kept" in line
    assert f"{server.cut:,}" in line
    assert cache_listing() == []


def test_unwritable_cache_folder_is_one_line_runtime_error(
    served_spec: WeightSpec,
    server: WeightsServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Root ignores permission bits, so the folder sits under a regular file: it can never be made.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TORCH_HOME", str(blocker / "torch"))
    code, _, err = cli(capsys, "weights", "resnet18.IMAGENET1K_V1", "--download")
    line = one_error_line(err)
    assert code == 1 and "cannot write to the weights cache" in line
    assert served_spec.url in line and server.requests == []
    if os.geteuid() != 0:  # a read-only folder, where permissions apply
        readonly = tmp_path / "readonly"
        (readonly / "hub" / "checkpoints").mkdir(parents=True)
        (readonly / "hub" / "checkpoints").chmod(0o500)
        monkeypatch.setenv("TORCH_HOME", str(readonly))
        try:
            code, _, err = cli(capsys, "weights", "resnet18.IMAGENET1K_V1", "--download")
        finally:
            (readonly / "hub" / "checkpoints").chmod(0o700)
        assert code == 1 and "cannot write to the weights cache" in one_error_line(err)
        assert cache_listing() == []


def test_full_disk_during_download_leaves_nothing(
    served_spec: WeightSpec,
    server: WeightsServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real_fdopen = os.fdopen

    class FillsUp(io.RawIOBase):
        def __init__(self, raw: io.BufferedWriter) -> None:
            self.raw, self.written = raw, 0

        def write(self, data: bytes) -> int:  # type: ignore[override]
            if self.written + len(data) > 200_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.raw.write(data)

        def close(self) -> None:
            self.raw.close()
            super().close()

    monkeypatch.setattr(pretrained.os, "fdopen", lambda fd, mode: FillsUp(real_fdopen(fd, mode)))
    code, _, err = cli(capsys, "weights", "resnet18.IMAGENET1K_V1", "--download")
    line = one_error_line(err)
    assert code == 1 and "no space left on the device" in line
    assert str(cache_dir()) in line
    assert cache_listing() == []


# --- building models with named weights -------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "size", "tv_kwargs"),
    [
        ("googlenet", 64, {"init_weights": False}),
        ("inception_v3", 96, {"init_weights": False}),
    ],
)
def test_inception_weights_keep_torchvisions_input_transform_and_aux_heads(
    model: str, size: int, tv_kwargs: dict, no_network: list[object]
) -> None:
    # torchvision builds these with transform_input=True and aux heads when it loads weights;
    # its files hold the aux heads, so strict loading needs them too.
    torch.manual_seed(0)
    build = getattr(torchvision.models, model)
    reference = build(weights=None, aux_logits=True, transform_input=True, **tv_kwargs).eval()
    spec = get_weight_spec(model, "DEFAULT")
    cache_dir().mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), cache_dir() / spec.file_name)
    built = create_model(model, weights="DEFAULT").eval()
    assert built.transform_input and built.aux_logits
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(built(x), reference(x), rtol=1e-5, atol=1e-5)
        # Built without the aux heads, as torchvision returns them, the file still loads.
        slim = create_model(model, weights="DEFAULT", aux_logits=False).eval()
        torch.testing.assert_close(slim(x), reference(x), rtol=1e-5, atol=1e-5)
    assert not any(key.startswith(("aux1.", "AuxLogits.")) for key in slim.state_dict())


def test_other_classes_or_channels_adapt_the_named_weights(
    tv_state: dict[str, torch.Tensor],
) -> None:
    cache_dir().mkdir(parents=True)
    torch.save(tv_state, cache_dir() / "resnet18-f37072fd.pth")
    with pytest.warns(UserWarning, match="freshly initialised classifier"):
        fine_tune = create_model("resnet18", weights="IMAGENET1K_V1", num_classes=5)
    assert fine_tune.fc.out_features == 5
    assert torch.equal(fine_tune.conv1.weight, tv_state["conv1.weight"])
    assert fine_tune.pretrained_cfg["categories"] == []  # the new head predicts other classes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grey = create_model("resnet18", weights="IMAGENET1K_V1", in_chans=1)
    assert torch.allclose(grey.conv1.weight, tv_state["conv1.weight"].sum(1, keepdim=True))
    assert grey.pretrained_cfg["in_chans"] == 1 and len(grey.pretrained_cfg["mean"]) == 1
    assert len(grey.pretrained_cfg["categories"]) == 1000


def test_file_paths_and_state_dicts_still_load(
    tv_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "mine.pth"
    torch.save(tv_state, path)
    by_path = create_model("resnet18", weights=str(path)).eval()
    by_state = create_model("resnet18", weights=tv_state).eval()
    assert not hasattr(by_path, "pretrained_cfg")
    assert torch.equal(by_path.fc.weight, by_state.fc.weight)
    with pytest.raises(WeightsError, match="does not exist"):
        create_model("resnet18", weights=str(tmp_path / "missing.pth"))


def test_shipped_transform_takes_photos_and_tensors() -> None:
    spec = get_weight_spec("resnet20", "fashion_mnist")
    transform = spec.transforms()
    photo = Image.new("RGB", (120, 90), (200, 30, 30))
    x = transform(photo)
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    luma = (0.299 * 200 + 0.587 * 30 + 0.114 * 30) / 255  # PIL's "L"
    expected = (luma - spec.mean[0]) / spec.std[0]
    assert torch.allclose(x, torch.full_like(x, expected), atol=0.01)
    batch = transform(torch.zeros(4, 1, 28, 28, dtype=torch.uint8))
    assert torch.allclose(batch, torch.full_like(batch, -spec.mean[0] / spec.std[0]))


# --- the table --------------------------------------------------------------------------------


def test_weights_table_shows_accuracy_size_and_what_is_here(
    tv_state: dict[str, torch.Tensor], capsys: pytest.CaptureFixture[str]
) -> None:
    cache_dir().mkdir(parents=True)
    torch.save(tv_state, cache_dir() / "resnet18-f37072fd.pth")
    code, out, _ = cli(capsys, "weights", "resnet18")
    assert code == 0
    row = next(line for line in out.splitlines() if "IMAGENET1K_V1" in line)
    for cell in ("resnet18", "torchvision", "ImageNet-1K", "69.76", "89.08", "44.7 MB", "yes"):
        assert cell in row
    code, out, _ = cli(capsys, "weights", "resnet50")
    assert code == 0 and "80.86" in out and "yes" not in out
    code, out, _ = cli(capsys, "weights", "resnet20")
    row = next(line for line in out.splitlines() if "fashion_mnist" in line)
    assert "cnnzoo" in row and "Fashion-MNIST" in row and "shipped" in row
    code, out, _ = cli(capsys, "weights", "--cached")
    assert "resnet18" in out and "resnet50" not in out
    code, out, _ = cli(capsys, "weights", "nothing-like-this")
    assert code == 1 and "no weights match" in out
