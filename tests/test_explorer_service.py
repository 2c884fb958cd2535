"""The explorer's computations, driven directly (the browser tests drive them through the page)."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo.errors import UsageError
from cnnzoo.explorer.service import PAGE_PIXELS, ByteCache, Explorer, NotFound, default_weights
from cnnzoo.inference import load_model
from cnnzoo.serve.errors import ApiError


class Served:
    """cnnzoo.serve's ServedModel as the explorer uses it: a model and its one worker thread."""

    def __init__(self, name: str, loaded) -> None:
        self.name, self.loaded = name, loaded
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"worker-{name}")
        self.calls = 0

    def call(self, fn, *args):
        self.calls += 1
        return asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


class Provider:
    def __init__(self, **models) -> None:
        self.models = {name: Served(name, inference) for name, inference in models.items()}
        self.added: list[str] = []

    def get(self, name):
        if name not in self.models:
            raise NotFound(f"no model {name!r}")
        return self.models[name]

    def names(self):
        return list(self.models)

    async def add(self, source, name=None):
        if not isinstance(source, str):  # an InferenceModel, built by the caller
            self.added.append(f"{source.name} (built)")
            served = Served(name or source.name, source)
        else:
            self.added.append(source)
            model, _, weights = source.partition(":")
            if weights == "broken":
                raise ApiError(400, "cannot download the weights (no network)")
            served = Served(name or model, load_model(model, weights or None))
        self.models[served.name] = served
        return served


def decode(data: bytes, channels: int) -> torch.Tensor:
    image = Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB")
    array = torch.from_numpy(np.asarray(image).copy())
    return array[None] if array.dim() == 2 else array.permute(2, 0, 1)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def resnet20():
    return load_model("resnet20", "fashion_mnist")


@pytest.fixture
def explorer(resnet20):
    return Explorer(Provider(resnet20=resnet20), decode, latency_ms=lambda name: 1.5)


def run(coroutine):
    return asyncio.run(coroutine)


def image_bytes() -> bytes:
    rng = np.random.default_rng(0)
    return png(rng.integers(0, 256, (28, 28), dtype=np.uint8))


def tile_levels(tile: dict) -> np.ndarray:
    data = base64.b64decode(tile["png"].split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)))


def test_maps_strongest_first_on_one_scale_and_cached(explorer, resnet20) -> None:
    stored = explorer.add_image(image_bytes(), "image/png")
    answer = run(explorer.maps("resnet20", stored.id, "conv1"))
    assert answer["kind"] == "maps" and answer["shape"] == [16, 28, 28]
    assert len(answer["tiles"]) == 16 and answer["pages"] == 1 and not answer["cached"]
    means = [tile["mean"] for tile in answer["tiles"]]
    assert means == sorted(means, reverse=True)
    with torch.no_grad():
        batch = resnet20.prepare([decode(image_bytes(), 1)])
        conv1 = resnet20.model.conv1(batch)[0]
    assert answer["low"] == pytest.approx(float(conv1.min()), abs=1e-6)
    assert answer["high"] == pytest.approx(float(conv1.max()), abs=1e-6)
    # Each tile is the channel's values, quantised on the layer's one scale.
    first = answer["tiles"][0]
    expected = ((conv1[first["channel"]] - answer["low"]) / (answer["high"] - answer["low"]) * 255)
    levels = tile_levels(first)
    assert levels.shape == (28, 28) and levels.dtype == np.uint8
    assert np.abs(levels.astype(int) - expected.round().numpy()).max() <= 1
    served = explorer.models.get("resnet20")
    calls = served.calls
    again = run(explorer.maps("resnet20", stored.id, "conv1"))
    assert again["cached"] and again["tiles"] == answer["tiles"] and served.calls == calls


def test_pages_of_a_wide_layer_and_vectors(explorer) -> None:
    stored = explorer.add_image(image_bytes(), "image/png")
    pages = [run(explorer.maps("resnet20", stored.id, "layer3.0.conv1", page, 24))
             for page in (0, 1, 2)]  # fmt: skip
    channels = [tile["channel"] for page in pages for tile in page["tiles"]]
    assert sorted(channels) == list(range(64)) and pages[0]["pages"] == 3
    with pytest.raises(UsageError, match="page 3"):
        run(explorer.maps("resnet20", stored.id, "layer3.0.conv1", 3, 24))
    logits = run(explorer.maps("resnet20", stored.id, "fc"))
    assert logits["kind"] == "vector" and len(logits["values"]) == 10
    assert [v["value"] for v in logits["values"]] == sorted(
        (v["value"] for v in logits["values"]), reverse=True
    )
    assert logits["values"][0]["label"] in explorer.models.get("resnet20").loaded.class_names
    with pytest.raises(NotFound, match="no layer 'layer9'"):
        run(explorer.maps("resnet20", stored.id, "layer9"))


def test_big_maps_come_fewer_to_a_page() -> None:
    vgg = load_model("vgg11")  # random weights: only the page size matters here
    explorer = Explorer(Provider(vgg11=vgg), decode)
    stored = explorer.add_image(png(np.zeros((224, 224, 3), np.uint8)), "image/png")
    answer = run(explorer.maps("vgg11", stored.id, "features.0", 0, 64))
    assert answer["per_page"] == PAGE_PIXELS // (224 * 224) == 16
    assert len(answer["tiles"]) == 16 and answer["pages"] == 4


def test_unit_field_and_arithmetic(explorer) -> None:
    stored = explorer.add_image(image_bytes(), "image/png")
    unit = run(explorer.unit("resnet20", stored.id, "layer1.0.conv1", 3, 0, 27))
    assert unit["kind"] == "conv" and len(unit["channels"]) == 16
    assert unit["total"] == pytest.approx(unit["value"], rel=1e-5, abs=1e-6)
    field = unit["field"]
    assert field["size"] == [5, 5] and (field["top"], field["right"]) == (-2, 29)
    assert field["visible"] == [0.0, 25.0, 2.0, 27.0]  # cut at the image's edges
    vector = run(explorer.unit("resnet20", stored.id, "fc", 2))
    assert vector["kind"] == "linear" and vector["field"] is None and vector["field_global"]
    with pytest.raises(UsageError, match="outside"):
        run(explorer.unit("resnet20", stored.id, "conv1", 0, 28, 0))


def test_explain_overlay_target_and_cache(explorer) -> None:
    stored = explorer.add_image(image_bytes(), "image/png")
    first = run(explorer.explain("resnet20", stored.id))
    assert first["layer"] == "layer3" and not first["cached"]
    assert first["overlay"].startswith("data:image/png;base64,")
    assert run(explorer.explain("resnet20", stored.id))["cached"]
    chosen = run(explorer.explain("resnet20", stored.id, target="Trouser"))
    assert chosen["target"] == 1 and chosen["label"] == "Trouser"
    occlusion = run(explorer.explain("resnet20", stored.id, "occlusion", layer="conv1"))
    assert occlusion["layer"] is None  # the pixel methods take no layer
    with pytest.raises(ApiError, match="target '10'"):
        run(explorer.explain("resnet20", stored.id, target="10"))
    with pytest.raises(UsageError, match="unknown method"):
        run(explorer.explain("resnet20", stored.id, "saliency"))


def test_images_are_kept_by_digest_and_forgotten_oldest_first(resnet20) -> None:
    explorer = Explorer(Provider(resnet20=resnet20), decode, image_bytes=25)
    ids = [explorer.add_image(bytes([i]) * 10, "image/png").id for i in range(3)]
    assert explorer.add_image(bytes([2]) * 10, "image/png").id == ids[2]
    with pytest.raises(NotFound, match="send it again"):
        explorer.image(ids[0])
    assert explorer.image(ids[1]).data == bytes([1]) * 10


def test_loading_a_zoo_model_with_and_without_its_weights(resnet20, monkeypatch) -> None:
    provider = Provider(resnet20=resnet20)
    explorer = Explorer(provider, decode)
    answer = run(explorer.load("lenet_caffe"))
    assert provider.added == ["lenet_caffe:fashion_mnist"] and answer["loaded"]
    assert "fashion_mnist" in answer["message"]
    assert not run(explorer.load("resnet20"))["loaded"]
    # Weights that cannot be had: the model is loaded without them, and the page is told why.
    monkeypatch.setattr("cnnzoo.explorer.service.default_weights", lambda model: "broken")
    answer = run(explorer.load("lenet5"))
    assert provider.added[-2:] == ["lenet5:broken", "lenet5 (built)"]
    assert answer["weights"] is None and not provider.get("lenet5").loaded.trained
    assert "without trained weights" in answer["message"] and "no network" in answer["message"]
    with pytest.raises(UsageError, match="unknown model"):
        run(explorer.load("resnet9000"))


def test_default_weights(monkeypatch) -> None:
    assert default_weights("resnet20") == "fashion_mnist"  # shipped: always here
    monkeypatch.setenv("CNNZOO_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-cnnzoo-test")
    assert default_weights("resnet50") is None  # not cached, and no downloads allowed
    monkeypatch.delenv("CNNZOO_OFFLINE")
    assert default_weights("resnet50") == "IMAGENET1K_V2"


def test_catalogue_rows_carry_served_latency(explorer) -> None:
    from cnnzoo.registry import list_models

    answer = run(explorer.catalogue(0, 3))
    assert answer["total"] == len(list_models()) == 77 and len(answer["rows"]) == 3
    assert set(answer["presets"]) == {"fast inference", "high accuracy", "learning",
                                      "memory limited"}  # fmt: skip
    rows = run(explorer.catalogue(list_models().index("resnet20") - 1, 3))["rows"]
    served = [row for row in rows if row["served"]]
    assert [row["name"] for row in served] == ["resnet20"] and served[0]["latency_ms"] == 1.5


def test_byte_cache_is_bounded_and_thread_safe() -> None:
    cache = ByteCache(100)
    for i in range(10):
        cache.put(i, str(i), 30)
    assert cache.nbytes == 90 and cache.get(6) is None and cache.get(9) == "9"
    cache.put("big", "x", 101)
    assert cache.get("big") is None

    def hammer(offset: int) -> None:
        for i in range(500):
            cache.put((offset, i), i, 7)
            cache.get((offset, i - 1))

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.nbytes <= 100
