"""A network as a graph of its layers, for drawing: blocks, shortcuts, branches and the tensor
shape on every edge, with each layer's parameters, multiply-adds and receptive field.

The model is traced with ``torch.fx`` (``forward_features`` then ``forward_head``, so the input
check in ``forward`` does not stop the trace); torch.nn layers stay single nodes, and a torch
function (a residual ``+``, an Inception ``cat``, a squeeze-excitation ``*``) is a node of its
own. One replay of the traced graph on the meta device gives every node's output shape, its
multiply-adds (torch's flop counter around that node alone) and its receptive field (the
tracker of :mod:`cnnzoo.analysis.receptive_field`, so the figures are the same as
``cnnzoo.receptive_field``'s). Nodes that carry no tensor (shape queries, asserts, the tuple of a
``chunk``) are left out and their inputs passed on to their users.

A *block* is a module inside which tensors merge: a residual block (``add``), a module whose
branches are concatenated (Inception, ShuffleNet units) or a squeeze-excitation unit (a ``mul``
by a 1x1 gate). Blocks nest (an SE unit inside a bottleneck). For drawing, a layer and the
element-wise layers that follow it alone (batch norm, activation, dropout) share one *box*.

:func:`layer_values` runs the traced graph cut after one layer, on real inputs, and returns that
layer's output and its first input (what a convolution unit's arithmetic needs).
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from cnnzoo.analysis.flops import InputSize, resolve_input_size, run_forward
from cnnzoo.analysis.receptive_field import LayerField, ReceptiveFieldError, _FieldTracker
from cnnzoo.models.features import LayerTracer

__all__ = ["GraphBlock", "GraphNode", "NetworkGraph", "layer_values", "network_graph"]

# Modules and functions that map each value to one value of the same place: they join the box of
# the layer before them.
ELEMENTWISE_MODULES = (
    nn.BatchNorm2d,
    nn.BatchNorm1d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Tanh,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)
ELEMENTWISE_FUNCTIONS = {
    "relu", "relu6", "silu", "sigmoid", "hardsigmoid", "hardswish", "gelu", "dropout", "tanh",
    "leaky_relu",
}  # fmt: skip
SE_TYPE_NAMES = {"se", "semodule", "selayer", "seblock"}  # timm's and common spellings
MERGE_KINDS = {"add": "residual", "iadd": "residual", "cat": "branches", "mul": "gate"}


@dataclass
class GraphNode:
    """One layer: a module call or a tensor function, with what it outputs."""

    id: str  # unique: the module's name (":2" for its second call) or "<scope>.<function>"
    op: str  # the function or module type in lower case: conv2d, batchnorm2d, relu, add, cat...
    type: str  # the module's class name, or the function's name
    module: str | None  # dotted module name for a module call
    scope: str  # the module the call happens in ("" for the model itself)
    inputs: list[str]  # ids of the nodes whose tensors this one reads ("input" for the image)
    shape: list[int]  # output shape without the batch axis
    params: int  # parameters of the module (0 on its second call: they are shared)
    macs: int  # multiply-adds of this call for one image
    detail: str  # the module's settings (kernel, stride, ...), as its repr shows them
    summary: str = ""  # a few words for the diagram: "conv 3x3, 64, /2", "+", "concat"
    block: str | None = None  # innermost block containing the node
    box: int = 0  # the drawing box it shares with the element-wise layers after it
    stage: int | None = None  # index in the model's feature_info when the node ends a stage
    rf: list[int] | None = None  # receptive field (H, W) in input pixels; None: not a local map
    jump: list[float] | None = None  # distance between neighbouring units, in input pixels
    rf_global: bool = False  # also sees the whole image (through a squeeze-excitation gate)

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 3


@dataclass
class GraphBlock:
    """A module whose insides merge tensors: drawn as a frame around its layers."""

    name: str
    type: str
    kind: str  # residual, branches, squeeze-excitation
    parent: str | None  # the enclosing block


@dataclass
class NetworkGraph:
    model_name: str
    input_size: tuple[int, ...]
    nodes: list[GraphNode]
    blocks: list[GraphBlock]
    output: str  # id of the node whose tensor the model returns
    graph_module: fx.GraphModule = field(repr=False)
    fx_names: dict[str, str] = field(repr=False, default_factory=dict)  # id -> fx node name
    fields: dict[str, LayerField] = field(repr=False, default_factory=dict)  # id -> its field

    def node(self, node_id: str) -> GraphNode:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"no layer {node_id!r} in {self.model_name}")

    def has(self, node_id: str) -> bool:
        return node_id in self.fx_names

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "input_size": list(self.input_size),
            "output": self.output,
            "nodes": [asdict(node) for node in self.nodes],
            "blocks": [asdict(block) for block in self.blocks],
        }


# --- tracing ---------------------------------------------------------------------------------


class _LayerTracer(LayerTracer):
    """Traces ``method`` of a model, layer by layer."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.traced_func_name = method

    def call_module(
        self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            self.path_of_module(m)
        except NameError:
            # A container made on the fly (VGG's ``classifier[:-1]``): its layers are installed,
            # so tracing through it records them under their own names.
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


def _trace(model: nn.Module) -> fx.GraphModule:
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        return fx.GraphModule(model, _LayerTracer("forward").trace(model))
    graph = _LayerTracer("forward_features").trace(model)
    output = next(node for node in graph.nodes if node.op == "output")
    features = output.args[0]
    graph.erase_node(output)
    head = _LayerTracer("forward_head").trace(model, concrete_args={"pre_logits": False})
    placeholders = [node for node in head.nodes if node.op == "placeholder"]
    mapping: dict[fx.Node, Any] = {placeholders[0]: features}
    for extra in placeholders[1:]:
        mapping[extra] = False  # pre_logits, fixed by the trace
    result = graph.graph_copy(head, mapping)
    graph.output(result)
    # The copied guard that pre_logits stays False is true by construction.
    for node in reversed(list(graph.nodes)):
        if node.op == "call_function" and node.target is torch._assert:
            graph.erase_node(node)
    traced = fx.GraphModule(model, graph)
    traced.graph.eliminate_dead_code()
    traced.graph.lint()
    traced.recompile()
    return traced


def _scope_and_types(node: fx.Node) -> tuple[list[str], dict[str, str]]:
    """The module paths a node is called inside (outermost first) and their class names."""
    stack = node.meta.get("nn_module_stack") or {}
    paths, types = [], {}
    for key, value in stack.items():
        path, cls = value if isinstance(value, tuple) else (key, value)
        path = str(path)
        paths.append(path)
        types[path] = getattr(cls, "__name__", str(cls))
    if node.op == "call_module" and paths and paths[-1] == node.target:
        paths = paths[:-1]  # the leaf module itself is the node, not its scope
    return paths, types


def _function_name(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_method":
        return str(target)
    if target in (operator.add, operator.iadd):
        return "add"
    if target in (operator.mul, operator.imul):
        return "mul"
    if target is operator.getitem:
        return "getitem"
    return getattr(target, "__name__", str(target)).lstrip("_")


# --- the replay that measures every node -------------------------------------------------------


class _Replay(nn.Module):
    """Runs the traced graph node by node, recording each node's output, multiply-adds and
    receptive field. A module, so that ``run_forward`` can swap meta stand-ins into it."""

    def __init__(self, graph_module: fx.GraphModule, tracker: _FieldTracker) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.tracker = tracker
        self.records: dict[str, tuple[Any, int, Any]] = {}

    def forward(self, x: torch.Tensor) -> Any:
        replay = self

        class Recorder(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                if n.op == "placeholder":
                    out = super().run_node(n)
                    if isinstance(out, torch.Tensor):
                        replay.tracker.seed(out)
                    replay.records[n.name] = (out, 0, replay.tracker.get(out))
                    return out
                counter = FlopCounterMode(display=False)
                with counter:
                    out = super().run_node(n)
                found = replay.tracker.get(out) if isinstance(out, torch.Tensor) else None
                replay.records[n.name] = (out, counter.get_total_flops() // 2, found)
                return out

        self.records.clear()
        return Recorder(self.graph_module).run(x)


def network_graph(model: nn.Module, input_size: InputSize | None = None) -> NetworkGraph:
    """The layer graph of ``model`` for one image of ``input_size`` (default: its own size).

    Runs on the meta device (nothing is computed; the model is left as it was). Raises
    ``torch.fx``'s errors for a model whose forward cannot be traced.
    """
    size = resolve_input_size(model, input_size)
    was_training = model.training
    model.eval()
    try:
        graph_module = _trace(model)
    finally:
        model.train(was_training)
    tracker = _FieldTracker()
    replay = _Replay(graph_module, tracker)
    try:
        run_forward(replay, size, "meta", context=lambda: tracker)
    except ReceptiveFieldError:
        tracker = _NoFields()  # an op without a field rule: shapes and MACs still come
        replay.tracker = tracker
        run_forward(replay, size, "meta", context=lambda: tracker)
    return _build(model, graph_module, replay.records, size)


class _NoFields(_FieldTracker):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


def _build(
    model: nn.Module,
    graph_module: fx.GraphModule,
    records: dict[str, tuple[Any, int, Any]],
    size: tuple[int, ...],
) -> NetworkGraph:
    modules = dict(model.named_modules())
    info = getattr(model, "feature_info", None)
    stage_of = {stage.module: index for index, stage in enumerate(info)} if info else {}
    nodes: list[GraphNode] = []
    fx_names: dict[str, str] = {}
    fields: dict[str, LayerField] = {}
    sources: dict[str, list[str]] = {}  # fx name -> ids of the kept nodes its value comes from
    calls: dict[str, int] = {}
    scope_types: dict[str, str] = {}
    output_id = ""
    for fx_node in graph_module.graph.nodes:
        inputs: list[str] = []
        for arg in fx_node.all_input_nodes:
            for source in sources.get(arg.name, []):
                if source not in inputs:
                    inputs.append(source)
        if fx_node.op == "output":
            output_id = inputs[0] if inputs else ""
            continue
        value, macs, found = records.get(fx_node.name, (None, 0, None))
        if fx_node.op == "placeholder":
            if isinstance(value, torch.Tensor):
                node_id = "input"
                nodes.append(
                    GraphNode(
                        id=node_id,
                        op="input",
                        type="input",
                        module=None,
                        scope="",
                        inputs=[],
                        shape=list(value.shape[1:]),
                        params=0,
                        macs=0,
                        detail="the image as the network takes it",
                    )
                )
                fx_names[node_id] = fx_node.name
                sources[fx_node.name] = [node_id]
            continue
        if not isinstance(value, torch.Tensor):
            sources[fx_node.name] = inputs  # no tensor of its own: pass its inputs on
            continue
        if fx_node.op == "get_attr":
            # A parameter used directly (ConvNeXt's layer scale, ViT's class token and position
            # embedding) is part of the layer that uses it, not a layer of its own.
            sources[fx_node.name] = []
            continue
        scope_paths, types = _scope_and_types(fx_node)
        scope_types.update(types)
        scope = scope_paths[-1] if scope_paths else ""
        if fx_node.op == "call_module":
            name = str(fx_node.target)
            module = modules.get(name) or graph_module.get_submodule(name)
            calls[name] = calls.get(name, 0) + 1
            node_id = name if calls[name] == 1 else f"{name}:{calls[name]}"
            params = sum(p.numel() for p in module.parameters()) if calls[name] == 1 else 0
            node = GraphNode(
                id=node_id,
                op=type(module).__name__.lower(),
                type=type(module).__name__,
                module=name,
                scope=scope,
                inputs=inputs,
                shape=list(value.shape[1:]),
                params=params,
                macs=macs,
                detail=module.extra_repr(),
                summary=_module_summary(module),
            )
        else:
            function = _function_name(fx_node)
            base = f"{scope}.{function}" if scope else function
            calls[base] = calls.get(base, 0) + 1
            node_id = base if calls[base] == 1 else f"{base}:{calls[base]}"
            node = GraphNode(
                id=node_id,
                op=function,
                type=function,
                module=None,
                scope=scope,
                inputs=inputs,
                shape=list(value.shape[1:]),
                params=0,
                macs=macs,
                detail="",
                summary=FUNCTION_SUMMARIES.get(function, function),
            )
        if found is not None:
            spatial = tuple(value.shape[-2:]) if found.axes is not None else None
            layer_field = LayerField(node_id, node.type, found, spatial)  # type: ignore[arg-type]
            fields[node_id] = layer_field
            if layer_field.size is not None and value.dim() == 4:
                node.rf = list(layer_field.size)
                node.jump = [float(v) for v in layer_field.jump]  # type: ignore[union-attr]
            node.rf_global = layer_field.global_context
        nodes.append(node)
        fx_names[node_id] = fx_node.name
        sources[fx_node.name] = [node_id]
    for stage_module, index in stage_of.items():
        # A stage's map is what its module returns: the last node called inside it.
        inside = [n for n in nodes if _within(n.module or n.scope, stage_module)]
        if inside:
            inside[-1].stage = index
    blocks = _blocks(nodes, scope_types)
    _assign_boxes(nodes)
    graph = NetworkGraph(
        model_name=getattr(model, "model_name", type(model).__name__),
        input_size=size,
        nodes=nodes,
        blocks=blocks,
        output=output_id,
        graph_module=graph_module,
        fx_names=fx_names,
        fields=fields,
    )
    return graph


FUNCTION_SUMMARIES = {"add": "+", "mul": "×", "cat": "concat", "getitem": "slice", "pad": "pad",
                      "flatten": "flatten", "adaptive_avg_pool2d": "global avg pool"}  # fmt: skip


def _sides(value: Any) -> str:
    values = (value, value) if isinstance(value, int) else tuple(value)
    return str(values[0]) if len(set(values)) == 1 else "×".join(str(v) for v in values)


def _module_summary(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        text = f"conv {'×'.join(map(str, module.kernel_size))}, {module.out_channels}"
        if tuple(module.stride) != (1, 1):
            text += f", /{_sides(module.stride)}"
        if module.groups > 1:
            depthwise = module.groups == module.in_channels
            text += ", depthwise" if depthwise else f", {module.groups} groups"
        return text
    if isinstance(module, nn.Linear):
        return f"dense {module.out_features}"
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        kind = "max" if isinstance(module, nn.MaxPool2d) else "avg"
        stride = module.stride or module.kernel_size
        return f"{kind} pool {_sides(module.kernel_size)}, /{_sides(stride)}"
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = module.output_size
        kind = "avg" if isinstance(module, nn.AdaptiveAvgPool2d) else "max"
        if size in (1, (1, 1)):
            return f"global {kind} pool"
        return f"adaptive {kind} pool to {_sides(size)}"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batch norm"
    if isinstance(module, nn.LocalResponseNorm):
        return "local response norm"
    if isinstance(module, (nn.Dropout, nn.Dropout2d)):
        return f"dropout {module.p:g}"
    return type(module).__name__.lower()


def _within(path: str, module: str) -> bool:
    return path == module or path.startswith(module + ".")


def _blocks(nodes: list[GraphNode], scope_types: dict[str, str]) -> list[GraphBlock]:
    """Modules holding a merge of tensors, each node tagged with its innermost block."""
    by_id = {node.id: node for node in nodes}
    kinds: dict[str, str] = {}
    for node in nodes:
        if node.module is None and node.op in MERGE_KINDS and len(node.inputs) >= 2 and node.scope:
            kind = MERGE_KINDS[node.op]
            if kind == "gate":
                gated = any(by_id[i].shape[-2:] == [1, 1] for i in node.inputs if i in by_id)
                kind = "squeeze-excitation" if gated else "product"
            kinds.setdefault(node.scope, kind)
    for scope, type_name in scope_types.items():
        if "squeeze" in type_name.lower() or type_name.lower() in SE_TYPE_NAMES:
            kinds[scope] = "squeeze-excitation"
    names = sorted(kinds, key=lambda name: (name.count("."), name))
    blocks = []
    for name in names:
        parents = [other for other in names if name.startswith(other + ".")]
        parent = max(parents, key=len) if parents else None
        blocks.append(GraphBlock(name, scope_types.get(name, ""), kinds[name], parent))
    for node in nodes:
        path = node.module or node.scope
        inside = [name for name in names if _within(path, name)]
        if node.module is None and node.scope in kinds:
            inside.append(node.scope)
        node.block = max(inside, key=len) if inside else None
    return blocks


def _assign_boxes(nodes: list[GraphNode]) -> None:
    users: dict[str, int] = {}
    for node in nodes:
        for source in node.inputs:
            users[source] = users.get(source, 0) + 1
    by_id = {node.id: node for node in nodes}
    box = -1
    for node in nodes:
        previous = by_id.get(node.inputs[0]) if len(node.inputs) == 1 else None
        joins = (
            previous is not None
            and previous.id != "input"
            and users.get(previous.id, 0) == 1
            and previous.block == node.block
            and previous.shape == node.shape
            and _is_elementwise(node)
        )
        if joins:
            node.box = previous.box  # type: ignore[union-attr]
        else:
            box += 1
            node.box = box


def _is_elementwise(node: GraphNode) -> bool:
    if node.module is None:
        return node.op in ELEMENTWISE_FUNCTIONS
    return node.op in {cls.__name__.lower() for cls in ELEMENTWISE_MODULES}


# --- values of one layer on real inputs ------------------------------------------------------


def _cut(graph: NetworkGraph, node_id: str) -> fx.GraphModule:
    """The traced graph computing only what ``node_id`` needs, returning its output and its
    tensor inputs."""
    if not graph.has(node_id):
        raise KeyError(f"no layer {node_id!r} in {graph.model_name}")
    source = graph.graph_module
    new_graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    wanted = graph.fx_names[node_id]
    target = None
    snapshots: list[fx.Node] = []
    for fx_node in source.graph.nodes:
        if fx_node.op == "output":
            break
        if fx_node.name == wanted:
            # The inputs as they were before the layer ran: an in-place ReLU or ``+=`` would
            # otherwise hand back its own output as its input.
            snapshots = [
                new_graph.call_function(_snapshot, (mapping[n],)) for n in fx_node.all_input_nodes
            ]
            target = fx_node
        mapping[fx_node] = new_graph.node_copy(fx_node, lambda n: mapping[n])
        if target is not None:
            break
    assert target is not None
    new_graph.output((mapping[target], snapshots))
    cut = fx.GraphModule(source, new_graph)
    cut.graph.eliminate_dead_code()
    cut.recompile()
    cut.delete_all_unused_submodules()
    return cut


def _snapshot(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def layer_values(
    graph: NetworkGraph,
    node_id: str,
    batch: torch.Tensor,
    *,
    cache: dict[str, fx.GraphModule] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(output, tensor inputs) of layer ``node_id`` for a normalised ``batch``, computing
    nothing after that layer. ``cache`` keeps the cut graphs between calls (one per layer)."""
    if node_id == "input":
        return batch, []
    cut = cache.get(node_id) if cache is not None else None
    if cut is None:
        cut = _cut(graph, node_id)
        if cache is not None:
            cache[node_id] = cut
    with torch.no_grad():
        output, inputs = cut(batch)
    return output, [item for item in inputs if isinstance(item, torch.Tensor)]


def describe_layer(graph: NetworkGraph, node_id: str) -> dict[str, Any]:
    """The facts the page shows for one layer, as plain data."""
    node = graph.node(node_id)
    data = asdict(node)
    data["field_center"] = None
    layer_field = graph.fields.get(node_id)
    if layer_field is not None and layer_field.center is not None:
        data["field_center"] = list(layer_field.center)
    return data
