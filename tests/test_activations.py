"""One unit explained: ranking, receptive-field box and the arithmetic with the real numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnzoo
from cnnzoo.analysis.activations import rank_channels, unit_arithmetic, unit_field
from cnnzoo.analysis.network_graph import layer_values, network_graph
from cnnzoo.analysis.zoo_table import selection_guide, zoo_rows
from cnnzoo.data import load_data
from cnnzoo.errors import UsageError
from cnnzoo.inference import load_model


@pytest.fixture(scope="module")
def resnet20():
    loaded = load_model("resnet20", "fashion_mnist")
    graph = network_graph(loaded.model, (loaded.channels, *loaded.input_size))
    _, (x_test, _) = load_data("digits")  # any real grey image; fashion may be absent
    image = torch.from_numpy(np.ascontiguousarray(x_test[0]))[None]
    batch = loaded.prepare([image])
    return loaded, graph, batch


def test_rank_channels_strongest_first_ties_in_order() -> None:
    maps = torch.zeros(4, 2, 2)
    maps[1] += 3
    maps[2] += 1
    maps[3] += 3
    assert rank_channels(maps).tolist() == [1, 3, 2, 0]
    assert rank_channels(torch.tensor([0.5, 2.0, -1.0])).tolist() == [1, 0, 2]


def test_first_conv_arithmetic_with_real_weights(resnet20) -> None:
    loaded, graph, batch = resnet20
    output, inputs = layer_values(graph, "conv1", batch)
    conv = loaded.model.conv1
    for channel, y, x in [(0, 0, 0), (5, 13, 14), (15, 27, 27)]:
        unit = unit_arithmetic(graph, "conv1", [inputs[0][0]], output[0], channel, y, x)
        assert unit["kind"] == "conv" and unit["value"] == float(output[0, channel, y, x])
        assert len(unit["channels"]) == 1  # one grey input channel
        total = sum(c["sum"] for c in unit["channels"]) + unit["bias"]
        assert total == pytest.approx(unit["total"], abs=1e-12)
        assert unit["total"] == pytest.approx(unit["value"], rel=1e-5, abs=1e-6)
        # The patch is the input around the unit, zeros where the 3x3 window meets padding.
        patch = np.array(unit["channels"][0]["patch"])
        padded = F.pad(inputs[0][0, 0], (1, 1, 1, 1))
        np.testing.assert_allclose(patch, padded[y : y + 3, x : x + 3].numpy(), rtol=1e-6)
        np.testing.assert_allclose(
            unit["channels"][0]["kernel"], conv.weight[channel, 0].detach().numpy(), rtol=1e-6
        )
    corner = unit_arithmetic(graph, "conv1", [inputs[0][0]], output[0], 0, 0, 0)
    assert corner["inside"][0] == [False, False, False] and corner["inside"][1][1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 6, "out_channels": 4, "kernel_size": 7, "stride": 2, "padding": 3},
        {"in_channels": 6, "out_channels": 6, "kernel_size": 3, "padding": 2, "dilation": 2,
         "groups": 6},
        {"in_channels": 4, "out_channels": 6, "kernel_size": (3, 5), "padding": "same",
         "groups": 2},
    ],
)  # fmt: skip
def test_conv_arithmetic_with_stride_groups_dilation(kwargs) -> None:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(**kwargs)).eval()
    graph = network_graph(model, (kwargs["in_channels"], 11, 13))
    x = torch.randn(1, kwargs["in_channels"], 11, 13)
    output, inputs = layer_values(graph, "0", x)
    per_group = kwargs["in_channels"] // kwargs.get("groups", 1)
    for channel in range(output.shape[1]):
        for y, col in [(0, 0), (output.shape[2] - 1, output.shape[3] - 1), (2, 3)]:
            unit = unit_arithmetic(graph, "0", [inputs[0][0]], output[0], channel, y, col)
            assert len(unit["channels"]) == per_group
            assert unit["total"] == pytest.approx(unit["value"], rel=1e-5, abs=1e-5)


def test_other_layers_formulas_match_their_outputs(resnet20) -> None:
    loaded, graph, batch = resnet20
    for layer, unit_at in [
        ("bn1", (3, 4, 5)),
        ("relu", (3, 4, 5)),
        ("layer1.0.add", (2, 7, 7)),
        ("avgpool", (10, 0, 0)),
        ("fc", (4, 0, 0)),
    ]:
        output, inputs = layer_values(graph, layer, batch)
        unit = unit_arithmetic(graph, layer, [t[0] for t in inputs], output[0], *unit_at)
        assert unit["kind"] != "other", layer
        assert unit["total"] == pytest.approx(unit["value"], rel=1e-5, abs=1e-5), layer
    fc = unit_arithmetic(graph, "fc", [inputs[0][0]], output[0], 4)
    magnitudes = [abs(term["product"]) for term in fc["terms"]]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert len(fc["terms"]) + fc["rest"]["count"] == 64
    with pytest.raises(UsageError, match="channel 16 is outside conv1's output 16x28x28"):
        output, inputs = layer_values(graph, "conv1", batch)
        unit_arithmetic(graph, "conv1", [inputs[0][0]], output[0], 16, 0, 0)


def test_unit_field_box_is_where_the_gradient_reaches() -> None:
    torch.manual_seed(0)
    model = cnnzoo.create_model("resnet20", num_classes=10, in_chans=1).eval()
    graph = network_graph(model, (1, 32, 32))
    fields = cnnzoo.receptive_field(model, (1, 32, 32))
    for layer, (y, x) in [("layer1.1.conv2", (5, 9)), ("layer2.0.conv1", (3, 6))]:
        box = unit_field(graph, layer, y, x)
        assert box.size == fields[layer].size and box.jump == fields[layer].jump
        image = torch.randn(1, 1, 32, 32, requires_grad=True)
        seen: list[torch.Tensor] = []
        handle = model.get_submodule(layer).register_forward_hook(
            lambda m, i, o, seen=seen: seen.append(o)
        )
        model(image)
        handle.remove()
        seen[0][0, 0, y, x].backward()
        rows, cols = torch.nonzero(image.grad[0, 0], as_tuple=True)
        assert box.top <= rows.min() and rows.max() <= box.bottom
        assert box.left <= cols.min() and cols.max() <= box.right
    assert unit_field(graph, "fc", 0, 0) is None


def test_catalogue_rows_and_selection_guide() -> None:
    rows = {row.name: row for row in zoo_rows(["resnet20", "lenet5"], progress=False)}
    assert rows["resnet20"].params == 269_722  # He et al.: 0.27 M and rows["resnet20"].year == 2015
    assert rows["resnet20"].weights[0] == "fashion_mnist"
    assert rows["lenet5"].params == 61_706 and rows["lenet5"].macs > 0
    guide = selection_guide(cnnzoo.list_models())
    assert guide["high accuracy"] == [f"efficientnet_b{i}" for i in range(4, 8)]
    assert "resnet18" in guide["learning"] and "vgg16" in guide["learning"]
    assert "shufflenet_v2_x1_0" in guide["memory limited"]
    assert "efficientnet_b0" in guide["fast inference"]
