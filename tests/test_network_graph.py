"""The layer graph the explorer draws: blocks, edges with shapes, per-layer facts and values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnzoo
from cnnzoo.analysis.flops import count_macs
from cnnzoo.analysis.network_graph import layer_values, network_graph
from cnnzoo.registry import get_entry


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return get_entry(name).builder(**kwargs).eval()


def by_id(graph):
    return {node.id: node for node in graph.nodes}


def test_resnet20_blocks_shortcuts_and_edge_shapes() -> None:
    graph = network_graph(meta_model("resnet20"), (3, 32, 32))
    nodes = by_id(graph)
    residual = [block.name for block in graph.blocks if block.kind == "residual"]
    assert residual == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    # The first block adds its conv path to its input, the stem's ReLU, through an identity
    # shortcut: the skip edge.
    assert nodes["layer1.0.add"].inputs == ["layer1.0.bn2", "layer1.0.shortcut"]
    assert nodes["layer1.0.shortcut"].inputs == ["relu"]
    # The downsampling block's shortcut is option A: a strided slice and a channel pad.
    assert nodes["layer2.0.add"].inputs == ["layer2.0.bn2", "layer2.0.shortcut.pad"]
    assert nodes["layer2.0.shortcut.pad"].shape == [32, 16, 16]
    assert nodes["conv1"].shape == [16, 32, 32]
    assert nodes["layer3.2.relu:2"].shape == [64, 8, 8]
    assert nodes["fc"].shape == [10] and graph.output == "fc"
    assert nodes["layer1.0.conv1"].block == "layer1.0"
    assert nodes["conv1"].params == 16 * 3 * 9 and nodes["conv1"].macs == 16 * 27 * 32 * 32
    assert nodes["layer3.2.relu:2"].stage == 2  # the deepest stage's output
    # conv -> bn -> relu share one box; the block's add starts a new one.
    assert nodes["conv1"].box == nodes["bn1"].box == nodes["relu"].box
    assert nodes["layer1.0.add"].box != nodes["layer1.0.bn2"].box
    every_id = [node.id for node in graph.nodes]
    assert len(every_id) == len(set(every_id))
    assert all(source in nodes for node in graph.nodes for source in node.inputs)


def test_inception_branches_and_se_units_are_blocks() -> None:
    graph = network_graph(meta_model("inception_v3"))
    nodes = by_id(graph)
    kinds = {block.name: block.kind for block in graph.blocks}
    assert kinds["Mixed_5b"] == "branches"
    assert len(nodes["Mixed_5b.cat"].inputs) == 4  # 1x1, 5x5, double 3x3, pool branches
    assert nodes["Mixed_5b.cat"].shape == [256, 35, 35]

    graph = network_graph(meta_model("se_resnet50"))
    nodes = by_id(graph)
    blocks = {block.name: block for block in graph.blocks}
    assert blocks["layer1.0.se"].kind == "squeeze-excitation"
    assert blocks["layer1.0.se"].parent == "layer1.0"
    gate = nodes["layer1.0.se.mul"]
    assert [nodes[i].shape for i in gate.inputs] == [[256, 56, 56], [256, 1, 1]]
    assert gate.rf_global and nodes["layer1.0.conv1"].rf_global is False


@pytest.mark.parametrize(
    "name", ["resnet20", "lenet5", "vgg16", "googlenet", "efficientnet_b0", "shufflenet_v2_x1_0"]
)
def test_fields_and_macs_agree_with_the_zoo_tools(name: str) -> None:
    model = meta_model(name)
    graph = network_graph(model)
    fields = cnnzoo.receptive_field(model)
    checked = 0
    for node in graph.nodes:
        if node.module and ":" not in node.id and node.module in fields.layers:
            size = fields[node.module].size
            assert node.rf == (list(size) if size and len(node.shape) == 3 else None), node.id
            checked += 1
    assert checked > 5
    assert sum(node.macs for node in graph.nodes) == count_macs(model)


@pytest.mark.slow
def test_every_zoo_model_has_a_graph() -> None:
    for name in cnnzoo.list_models():
        if name == "resnet1202":  # 4,800 nodes; the same code as resnet110
            continue
        graph = network_graph(meta_model(name))
        assert graph.output and graph.nodes[0].id == "input", name
        assert by_id(graph)[graph.output].shape == [get_entry(name).num_classes], name
        assert all(node.inputs for node in graph.nodes[1:]), name


def test_layer_values_are_the_model_s_own() -> None:
    torch.manual_seed(0)
    model = cnnzoo.create_model("resnet20", num_classes=10, in_chans=1).eval()
    graph = network_graph(model, (1, 28, 28))
    batch = torch.randn(2, 1, 28, 28)
    seen = {}
    model.conv1.register_forward_hook(lambda m, i, o: seen.setdefault("conv1", o))
    with torch.no_grad():
        logits = model(batch)
    cache: dict = {}
    output, inputs = layer_values(graph, graph.output, batch, cache=cache)
    torch.testing.assert_close(output, logits, rtol=0, atol=0)
    output, inputs = layer_values(graph, "conv1", batch, cache=cache)
    torch.testing.assert_close(output, seen["conv1"], rtol=0, atol=0)
    torch.testing.assert_close(inputs[0], batch, rtol=0, atol=0)
    # The ReLU runs in place; its input is still the batch norm's output, negatives included.
    output, inputs = layer_values(graph, "relu", batch, cache=cache)
    assert (inputs[0] < 0).any() and (output >= 0).all()
    torch.testing.assert_close(output, inputs[0].clamp_min(0))
    output, inputs = layer_values(graph, "layer1.0.add", batch, cache=cache)
    torch.testing.assert_close(output, inputs[0] + inputs[1])
    assert set(cache) == {"fc", "conv1", "relu", "layer1.0.add"}
    with pytest.raises(KeyError, match="no layer"):
        layer_values(graph, "layer9", batch)
