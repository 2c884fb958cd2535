"""The explorer page in a real browser (Debian's chromium through chromium-driver) against a
real ``cnnzoo serve`` subprocess on a free 127.0.0.1 port.

One server (resnet20 and lenet5 with their shipped Fashion-MNIST weights) and one browser for
the whole module; every wait is an explicit condition, never a sleep. Each test saves a
screenshot (``$CNNZOO_SCREENSHOTS``, else pytest's temporary folder).
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image
from serve_helpers import Server

import cnnzoo
from cnnzoo.inference import load_model

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("selenium is not installed (pip install -e '.[test]')", allow_module_level=True)

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT = 90  # seconds: generous for a loaded 2-core machine; conditions return at once when met


def by_id(testid: str) -> tuple[str, str]:
    return By.CSS_SELECTOR, f'[data-testid="{testid}"]'


@pytest.fixture(scope="module")
def server():
    process = Server("resnet20:fashion_mnist", "lenet5:fashion_mnist", env={"CNNZOO_OFFLINE": "1"})
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        message = "chromium and chromium-driver are needed (`make browser` installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="cnnzoo-chromium-")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("CNNZOO_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def page(browser, server, screenshots, request):
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.set_window_size(1400, 1000)
    browser.get(server.url + "/")
    wait(browser).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    yield browser
    browser.save_screenshot(str(screenshots / f"{request.node.name}.png"))


def snap(
    driver, screenshots: Path, name: str, element_id: str | None = None, height: int = 1000
) -> None:
    """A screenshot in the middle of a test, with ``element_id`` scrolled to the top."""
    driver.set_window_size(1400, height)
    if element_id:
        driver.execute_script(
            "document.getElementById(arguments[0]).scrollIntoView({block: 'start'});"
            "window.scrollBy(0, -70)",  # below the sticky header
            element_id,
        )
    driver.save_screenshot(str(screenshots / f"{name}.png"))
    driver.set_window_size(1400, 1000)


def wait(driver, seconds: float = WAIT) -> WebDriverWait:
    return WebDriverWait(driver, seconds)


def fashion_test_image(tmp_path: Path, index: int = 0) -> tuple[Path, torch.Tensor]:
    from cnnzoo.data.datasets import load_dataset

    bundle = load_dataset("fashion_mnist", val_split=0)
    image = bundle.test.images[index]
    path = tmp_path / f"fashion-{index}.png"
    Image.fromarray(image[0].numpy()).save(path)
    return path, image


def api_topk(server, model: str, path: Path) -> list[dict]:
    request = urllib.request.Request(
        f"{server.url}/v1/models/{model}/predict?topk=5",
        data=path.read_bytes(),
        headers={"Content-Type": "image/png"},
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        answer = json.load(response)
    return answer["predictions"][0]["topk"]


def shown_topk(driver) -> list[tuple[str, float]]:
    """The top-5 on the page, read in one step (the list is redrawn as answers arrive)."""
    items = driver.execute_script(
        "return [...document.querySelectorAll('[data-testid=\"topk\"] li')]"
        ".map(li => [li.dataset.label, li.dataset.probability])"
    )
    return [(label, float(probability)) for label, probability in items]


def upload(driver, path: Path) -> None:
    driver.find_element(*by_id("file-input")).send_keys(str(path))


def channels_shown(driver) -> set[str]:
    return {t.get_attribute("data-channel") for t in driver.find_elements(*by_id("activation-map"))}


def click(driver, element) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    wait(driver).until(EC.element_to_be_clickable(element))
    element.click()


def test_upload_shows_the_api_s_top5_and_an_overlay(page, server, tmp_path) -> None:
    path, _ = fashion_test_image(tmp_path, 0)
    expected = [(item["label"], round(item["probability"], 4)) for item in
                api_topk(server, "resnet20", path)]  # fmt: skip
    upload(page, path)
    wait(page).until(lambda d: len(shown_topk(d)) == 5)
    shown = [(label, round(p, 4)) for label, p in shown_topk(page)]
    assert shown == expected
    assert shown[0][0] == "Ankle boot"  # test image 0 of Fashion-MNIST
    overlay = wait(page).until(EC.visibility_of_element_located(by_id("cam-overlay")))
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    seen = page.find_element(*by_id("saw-image"))
    assert page.execute_script("return arguments[0].naturalWidth", seen) == 28
    # Another method: the overlay is recomputed, and the layer choice no longer applies.
    before = overlay.get_attribute("src")
    Select(page.find_element(*by_id("cam-method"))).select_by_value("occlusion")
    wait(page).until(lambda d: d.find_element(*by_id("cam-overlay")).get_attribute("src") != before)
    assert not page.find_element(By.ID, "cam-layer").is_enabled()
    assert "occlusion" in page.find_element(By.ID, "cam-note").text


def test_layer_maps_unit_field_and_arithmetic(page, server, screenshots, tmp_path) -> None:
    path, image = fashion_test_image(tmp_path, 0)
    upload(page, path)
    wait(page).until(lambda d: len(shown_topk(d)) == 5)
    # Keyboard: focus the first convolution in the diagram and press Enter.
    layer = wait(page).until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, '[data-testid="layer"][data-name="conv1"]')))  # fmt: skip
    page.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus()",
                        layer)  # fmt: skip
    layer.send_keys(Keys.ENTER)
    tiles = wait(page).until(lambda d: d.find_elements(*by_id("activation-map")) or None)
    assert len(tiles) == 16  # conv1's 16 channels, one page
    means = [float(t.get_attribute("data-mean")) for t in tiles]
    assert means == sorted(means, reverse=True)  # strongest first
    # Click the strongest map low and right of its centre (on the boot): the unit under the
    # pointer.
    tile = tiles[0]
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", tile)
    width = tile.size["width"]
    ActionChains(page).move_to_element_with_offset(tile, width // 6, width // 8).click().perform()
    box = wait(page).until(lambda d: (b := d.find_element(*by_id("rf-box"))).get_attribute(
        "data-size") and b.is_displayed() and b)  # fmt: skip
    loaded = load_model("resnet20", "fashion_mnist")
    fields = cnnzoo.receptive_field(loaded.model, (1, 28, 28))
    assert box.get_attribute("data-size") == "x".join(map(str, fields["conv1"].size))
    math_box = wait(page).until(EC.visibility_of_element_located(by_id("unit-math")))
    wait(page).until(lambda d: d.find_element(*by_id("unit-math")).get_attribute("data-kind"))
    value = float(math_box.get_attribute("data-value"))
    terms = [float(t.get_attribute("data-sum")) for t in
             math_box.find_elements(By.CSS_SELECTOR, "[data-sum]")]  # fmt: skip
    bias = float(math_box.get_attribute("data-bias"))
    assert len(terms) == 1  # one grey input channel
    assert math.isclose(sum(terms) + bias, value, rel_tol=1e-5, abs_tol=1e-6)
    # The value shown is the network's own: conv1 of the real weights at that unit.
    channel = int(tile.get_attribute("data-channel"))
    caption = page.find_element(By.ID, "unit-map-caption").text
    row = int(caption.split("row ")[1].split(",")[0])
    column = int(caption.split("column ")[1].split(" ")[0])
    with torch.no_grad():
        conv1 = loaded.model.conv1(loaded.prepare([image]))[0, channel, row, column]
    assert value == pytest.approx(float(conv1), rel=1e-5, abs=1e-6)
    snap(page, screenshots, "explorer-unit", "inside-panel", height=1330)
    # A deep layer: its field is the one receptive_field computes, and its 64 maps are paged.
    deep = page.find_element(By.CSS_SELECTOR, '[data-testid="layer"][data-name="layer3.2.conv2"]')
    click(page, deep)
    wait(page).until(lambda d: "of 64" in d.find_element(By.ID, "page-text").text)
    first_page = channels_shown(page)
    assert len(first_page) == 32
    click(page, page.find_element(By.ID, "next"))
    wait(page).until(lambda d: "33–64 of 64" in d.find_element(By.ID, "page-text").text)
    second_page = channels_shown(page)
    assert len(second_page) == 32 and not first_page & second_page
    click(page, page.find_elements(*by_id("activation-map"))[0])
    wait(page).until(lambda d: d.find_element(*by_id("rf-box")).get_attribute("data-size")
                     == "x".join(map(str, fields["layer3.2.conv2"].size)))  # fmt: skip


def test_a_text_file_named_png_shows_the_server_s_error(page, screenshots, tmp_path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("these are my notes, not a picture\n")
    upload(page, fake)
    error = wait(page).until(EC.visibility_of_element_located((By.ID, "image-error")))
    assert error.get_attribute("data-testid") == "error"
    assert "notes.png" in error.text and len(error.text) > 20
    assert not shown_topk(page)
    snap(page, screenshots, "explorer-refused-upload")
    # A good image afterwards works and clears the error.
    good, _ = fashion_test_image(tmp_path, 1)
    upload(page, good)
    wait(page).until(lambda d: len(shown_topk(d)) == 5)
    assert not page.find_element(By.ID, "image-error").is_displayed()


def test_drawing_on_the_canvas_changes_the_answer(page) -> None:
    Select(page.find_element(*by_id("model-select"))).select_by_value("lenet5")
    canvas = wait(page).until(EC.visibility_of_element_located(by_id("draw-canvas")))
    click(page, page.find_element(By.ID, "clear"))  # the blank canvas: an answer to compare with
    wait(page).until(lambda d: len(shown_topk(d)) == 5)
    blank = shown_topk(page)
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    side = canvas.size["width"]
    # A tall bar in the middle: a pair of trousers to a Fashion-MNIST model.
    actions = ActionChains(page).move_to_element_with_offset(canvas, -side // 10, -side // 3)
    actions.click_and_hold()
    for step in range(1, 9):
        actions.move_by_offset(0, side // 12)
        if step == 4:
            actions.move_by_offset(side // 5, 0)
    actions.release().perform()
    wait(page).until(lambda d: len(shown_topk(d)) == 5 and shown_topk(d) != blank)
    assert shown_topk(page) != blank


GIVE_FILE = """
const [data, name, how] = arguments;
const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, { type: "image/png" }));
if (how === "drop") {
  document.getElementById("drop").dispatchEvent(
    new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
} else {
  document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true }));
}
"""


def test_drop_and_paste_give_the_page_an_image(page, server, tmp_path) -> None:
    for index, how in ((3, "drop"), (4, "paste")):
        path, _ = fashion_test_image(tmp_path, index)
        data = base64.b64encode(path.read_bytes()).decode()
        page.execute_script(GIVE_FILE, data, path.name, how)
        expected = [item["label"] for item in api_topk(server, "resnet20", path)]
        wait(page).until(lambda d, expected=expected: [t[0] for t in shown_topk(d)] == expected)


def test_compare_two_models_on_one_image(page, server, tmp_path) -> None:
    path, _ = fashion_test_image(tmp_path, 2)
    upload(page, path)
    wait(page).until(lambda d: len(shown_topk(d)) == 5)
    Select(page.find_element(By.ID, "compare-model")).select_by_value("lenet5")
    sides = wait(page).until(lambda d: len(s := d.find_elements(By.CSS_SELECTOR, "#compare .side"))
                             == 2 and s)  # fmt: skip
    for side in sides:
        model = side.get_attribute("data-model")
        items = side.find_elements(By.CSS_SELECTOR, "li")
        labels = [li.get_attribute("data-label") for li in items]
        assert labels == [item["label"] for item in api_topk(server, model, path)]
        assert "inference" in side.text and "ms" in side.text
        assert side.find_element(By.CSS_SELECTOR, "img.overlay").get_attribute("src").startswith(
            "data:image/png")


def test_catalogue_presets_sorting_and_loading_a_zoo_model(page) -> None:
    click(page, page.find_element(By.CSS_SELECTOR, "#catalogue-details summary"))
    table = page.find_element(*by_id("catalogue"))
    # The first chunk holds the notes' "fast inference" picks (MobileNets, EfficientNet-B0).
    wait(page).until(lambda d: len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) >= 8)
    click(page, page.find_element(By.CSS_SELECTOR, '#presets [data-preset="fast inference"]'))
    click(page, page.find_element(By.CSS_SELECTOR, '#catalogue th[data-key="params"] button'))
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    names = [row.get_attribute("data-name") for row in rows]
    # Fewest parameters first: 2.54 M, 3.50 M, 5.29 M, 5.48 M.
    assert names == ["mobilenet_v3_small", "mobilenet_v2", "efficientnet_b0", "mobilenet_v3_large"]
    assert "2.54 M" in rows[0].text  # MobileNetV3-small's 2,542,856 parameters
    # A zoo model the server does not serve: picking it loads it, weights included.
    Select(page.find_element(*by_id("model-select"))).select_by_value("lenet_caffe")
    notice = wait(page).until(EC.visibility_of_element_located((By.ID, "notice")))
    assert "loaded" in notice.text and "fashion_mnist" in notice.text
    wait(page).until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, '[data-testid="layer"][data-name="conv2"]')))  # fmt: skip


def test_phone_width_keeps_the_page_readable(page, tmp_path) -> None:
    # Layout at a phone's width: one column, nothing wider than the screen.
    page.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
    )
    page.refresh()
    wait(page).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    sample = wait(page).until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, '[data-testid="sample-image"][data-group="fashion_mnist"]')))  # fmt: skip
    sample.click()
    wait(page).until(lambda d: len(shown_topk(d)) == 5)
    assert page.execute_script("return document.documentElement.scrollWidth") <= 390
    topk = page.find_element(*by_id("topk"))
    assert topk.is_displayed() and topk.size["width"] >= 150
    wait(page).until(EC.visibility_of_element_located(by_id("cam-overlay")))
    page.execute_script("arguments[0].scrollIntoView({block: 'start'})",
                        page.find_element(By.ID, "answer-panel"))  # fmt: skip

