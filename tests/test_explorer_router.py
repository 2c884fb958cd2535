"""The explorer as `cnnzoo serve` mounts it: the page, its files, its endpoints, the API key."""

from __future__ import annotations

import io
import re

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cnnzoo.explorer import STATIC_DIR
from cnnzoo.serve import create_app

# A reference to another host in HTML, CSS or a JS import.
REMOTE = re.compile(r"(?:src|href)\s*=\s*[\"']?https?:|url\(\s*[\"']?https?:|from\s+[\"']https?:")


def png_bytes(side: int = 28) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(["lenet5:fashion_mnist"])) as test_client:
        yield test_client


def test_the_page_and_its_files_load_from_this_server_only(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'data-testid="model-select"' in page.text
    assets = re.findall(r'(?:src|href)="(/explorer/static/[^"]+)"', page.text)
    assert len(assets) >= 2
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    # Works offline: nothing in the page's files points at another host, and the layout
    # library is vendored with its licence.
    for path in STATIC_DIR.rglob("*"):
        if path.suffix in {".html", ".css", ".js"}:
            text = path.read_text()
            assert not REMOTE.findall(text), path
            assert "fonts.googleapis" not in text and "cdn" not in text.lower(), path
    vendored = STATIC_DIR / "vendor" / "dagre-3.1.3"
    assert (vendored / "LICENSE").read_text().startswith("Copyright (c) 2012-2014 Chris Pettitt")
    assert client.get("/explorer/static/vendor/dagre-3.1.3/dagre.esm.js").status_code == 200


def test_refused_uploads_carry_the_server_s_codes_and_words(client) -> None:
    text = client.post("/explorer/api/images?name=notes.png", content=b"plain text, not a picture",
                       headers={"content-type": "image/png"})  # fmt: skip
    assert text.status_code == 415
    assert text.json() == {
        "error": "notes.png: not a JPEG, PNG, WebP, BMP, GIF or TIFF image (by its first bytes)",
        "status": 415,
    }
    huge = client.post("/explorer/api/images", content=b"\0" * (11 * 2**20),
                       headers={"content-type": "image/png"})  # fmt: skip
    assert huge.status_code == 413
    stored = client.post("/explorer/api/images", content=png_bytes(),
                         headers={"content-type": "image/png"})  # fmt: skip
    assert stored.status_code == 200 and stored.json()["format"] == "PNG"
    image = stored.json()["id"]
    maps = client.get("/explorer/api/models/lenet5/maps", params={"image": image, "layer": "conv1"})
    assert maps.status_code == 200 and maps.json()["shape"] == [6, 28, 28]
    assert client.get("/explorer/api/models/lenet5/maps",
                      params={"image": image, "layer": "nope"}).status_code == 404  # fmt: skip
    missing = client.get("/explorer/api/models/alexnet/graph")
    assert missing.status_code == 404 and "served: lenet5" in missing.json()["error"]
    bad = client.get("/explorer/api/models/lenet5/unit", params={"image": image, "layer": "conv1",
                                                                 "channel": -1})  # fmt: skip
    assert bad.status_code == 400


def test_the_catalogue_shows_the_latency_the_server_measured(client) -> None:
    from cnnzoo.registry import list_models

    where = {"offset": list_models().index("lenet5"), "limit": 1}
    client.post("/v1/models/lenet5/predict", content=png_bytes(),
                headers={"content-type": "image/png"})  # fmt: skip
    row = client.get("/explorer/api/catalogue", params=where).json()["rows"][0]
    assert row["name"] == "lenet5" and row["served"] and row["params"] == 61_706
    metrics = client.get("/metrics").text
    sums = [line for line in metrics.splitlines()
            if line.startswith('cnnzoo_inference_seconds_sum{model="lenet5"}')]  # fmt: skip
    counts = [line for line in metrics.splitlines()
              if line.startswith('cnnzoo_inference_seconds_count{model="lenet5"}')]  # fmt: skip
    mean_ms = float(sums[0].split()[-1]) / float(counts[0].split()[-1]) * 1e3
    assert row["latency_ms"] == pytest.approx(mean_ms, rel=1e-6) and row["latency_ms"] > 0


def test_the_api_key_guards_the_data_not_the_page() -> None:
    app = create_app(["lenet5:fashion_mnist"], api_key="s3cret")
    with TestClient(app) as client:
        assert client.get("/").status_code == 200
        assert client.get("/explorer/static/js/main.js").status_code == 200
        samples = client.get("/explorer/api/samples")
        assert samples.status_code == 200
        first = samples.json()["samples"][0]["url"]
        assert client.get(first).status_code == 200  # an <img> cannot send the key
        assert client.get("/explorer/api/zoo").status_code == 401
        assert client.post("/explorer/api/images", content=png_bytes()).status_code == 401
        key = {"Authorization": "Bearer s3cret"}
        assert client.get("/explorer/api/zoo", headers=key).status_code == 200
        assert client.get("/explorer/api/models/lenet5/graph", headers=key).status_code == 200
