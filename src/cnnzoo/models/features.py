"""Feature maps from any stage of any zoo model, after timm's ``features_only`` API.

Every model declares its stages as plain data, a :class:`FeatureInfo`: for each stage the module
whose output is the stage's map, its channels and its reduction (the cumulative stride, i.e. how
many input pixels one step on the map spans). :func:`feature_extractor` turns a model into a
backbone that returns the maps of the chosen stages::

    backbone = create_model("resnet50", features_only=True, out_indices=(1, 2, -1))
    c2, c3, c5 = backbone(images)            # one map per chosen stage
    backbone.feature_info.channels()         # [256, 512, 2048]

The backbone is a ``torch.fx`` graph of the model's ``forward_features``, cut after the last
chosen stage: nothing past it is computed or kept, the classifier is gone, and the remaining
parameters keep their names (so a checkpoint of the full model loads into it with
``strict=False``). Modules whose forward depends on the training flag (batch norm, dropout,
stochastic depth) stay whole modules in the graph, so ``train()``/``eval()`` work as usual.

A Vision Transformer's stages output sequences of tokens, (N, prefix + h·w, C) with the class
token first; its backbone returns them as maps, (N, C, h, w) of the patch tokens
(:func:`tokens_to_map`), as timm's ViT backbones do. Such a model says how many tokens precede
the patches in ``num_prefix_tokens`` (timm's name).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, overload

import torch
from torch import fx, nn

if TYPE_CHECKING:
    from cnnzoo.models.base import ZooModel

__all__ = [
    "FeatureInfo",
    "FeatureNet",
    "FeatureStage",
    "feature_extractor",
    "last_at_each_reduction",
    "map_to_tokens",
    "tokens_to_map",
]


@dataclass(frozen=True)
class FeatureStage:
    """One stage: ``module`` (dotted name) outputs ``num_chs`` maps at 1/``reduction`` scale."""

    module: str
    num_chs: int
    reduction: int


class FeatureInfo(Sequence[FeatureStage]):
    """The stages of a model, shallow to deep, with timm's accessors.

    Built from ``(module, channels, reduction)`` rows or :class:`FeatureStage` objects. Indices
    may be negative (``-1`` is the deepest stage), as in timm.
    """

    def __init__(self, stages: Iterable[FeatureStage | tuple[str, int, int]]) -> None:
        self._stages = tuple(s if isinstance(s, FeatureStage) else FeatureStage(*s) for s in stages)
        if not self._stages:
            raise ValueError("a model needs at least one feature stage")

    @overload
    def __getitem__(self, index: int) -> FeatureStage: ...
    @overload
    def __getitem__(self, index: slice) -> FeatureInfo: ...
    def __getitem__(self, index: int | slice) -> FeatureStage | FeatureInfo:
        if isinstance(index, slice):
            return FeatureInfo(self._stages[index])
        return self._stages[index]

    def __len__(self) -> int:
        return len(self._stages)

    def __iter__(self) -> Iterator[FeatureStage]:
        return iter(self._stages)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureInfo) and self._stages == other._stages

    def __hash__(self) -> int:
        return hash(self._stages)

    def __repr__(self) -> str:
        rows = ", ".join(f"{s.module}({s.num_chs}, /{s.reduction})" for s in self._stages)
        return f"FeatureInfo([{rows}])"

    def channels(self) -> list[int]:
        return [stage.num_chs for stage in self._stages]

    def reduction(self) -> list[int]:
        return [stage.reduction for stage in self._stages]

    def module_name(self) -> list[str]:
        return [stage.module for stage in self._stages]

    def get_dicts(self) -> list[dict[str, Any]]:
        return [asdict(stage) for stage in self._stages]

    def resolve(self, out_indices: int | Sequence[int] | None = None) -> tuple[int, ...]:
        """Non-negative stage indices for ``out_indices`` (default: every stage), in network
        order (as timm returns the maps, whatever the order asked for).

        An int ``n`` means the last ``n`` stages (timm's convention); a sequence lists stages,
        negative ones counted from the end. Out-of-range or repeated indices are a ValueError.
        """
        count = len(self._stages)
        if out_indices is None:
            return tuple(range(count))
        if isinstance(out_indices, int):
            if not 1 <= out_indices <= count:
                raise ValueError(f"out_indices={out_indices}: this model has {count} stages")
            return tuple(range(count - out_indices, count))
        resolved = []
        for index in out_indices:
            if not isinstance(index, int) or not -count <= index < count:
                raise ValueError(
                    f"out_indices has {index!r}; this model has {count} stages "
                    f"(0..{count - 1}, or -{count}..-1): {', '.join(self.module_name())}"
                )
            resolved.append(index % count)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"out_indices {tuple(out_indices)} names a stage twice")
        return tuple(sorted(resolved))


def last_at_each_reduction(layers: Iterable[tuple[str, int, int]]) -> FeatureInfo:
    """Stages of a plain stack of layers given as ``(module, out channels, stride)``, in order:
    the last layer at each cumulative reduction (the output just before each downsampling).
    """
    stages: dict[int, FeatureStage] = {}
    reduction = 1
    for module, channels, stride in layers:
        reduction *= stride
        stages[reduction] = FeatureStage(module, channels, reduction)
    return FeatureInfo(stages.values())


def tokens_to_map(tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    """(N, prefix + h·w, C) tokens -> (N, C, h, w): the patch tokens as a map (a square grid,
    read row by row as a ViT's patches are); the ``prefix`` tokens (class token) are dropped."""
    patches = tokens[:, prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
    return patches.transpose(1, 2).unflatten(2, (side, side))


def map_to_tokens(maps: torch.Tensor, prefix_tokens: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`tokens_to_map`: (N, C, h, w) and the (N, prefix, C) tokens in front
    -> (N, prefix + h·w, C)."""
    return torch.cat([prefix_tokens, maps.flatten(2).transpose(1, 2)], dim=1)


def _is_torch_layer(module: nn.Module) -> bool:
    """A torch.nn layer, or a subclass of one (WholeInputConv2d is a Conv2d): trace as one op."""
    containers = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)
    return any(
        base.__module__.startswith("torch.nn") and base not in containers
        for base in type(module).__mro__
    )


class LayerTracer(fx.Tracer):
    """A torch.fx tracer that keeps torch.nn layers (and modules marked ``trace_as_leaf``) as
    single nodes and traces through every container."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # Modules that branch on self.training (stochastic depth) or on concrete shapes declare
        # `trace_as_leaf`; keeping them whole keeps the graph right in train and eval mode.
        return bool(getattr(m, "trace_as_leaf", False)) or (
            _is_torch_layer(m) and not isinstance(m, nn.Sequential)
        )


class _StageTracer(LayerTracer):
    """Traces ``forward_features`` and remembers the value each wanted module returns."""

    traced_func_name = "forward_features"

    def __init__(self, wanted: Iterable[str]) -> None:
        super().__init__()
        self.wanted = set(wanted)
        self.outputs: dict[str, fx.Node] = {}

    def call_module(
        self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        out = super().call_module(m, forward, args, kwargs)
        name = self.path_of_module(m)
        if name in self.wanted:
            if name in self.outputs:
                raise ValueError(f"stage module {name!r} runs more than once in forward_features")
            if not isinstance(out, fx.Proxy):
                raise ValueError(f"stage module {name!r} does not return one tensor")
            self.outputs[name] = out.node
        return out


class _InputCheck:
    """The model's input rule, kept without keeping the model (its classifier) alive."""

    def __init__(self, model: ZooModel) -> None:
        stem = model.get_submodule(model.first_conv)
        self.name = model.model_name
        self.channels = stem.in_channels if isinstance(stem, nn.Conv2d) else None
        self.min_side = model.min_input_size
        # Models with a fixed size either take exactly it or pad up to it (LeNet-5: 28..32).
        self.max_side = model.fixed_input_size

    def __call__(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self.name} features expect (N, C, H, W) images, got {shape}")
        if self.channels is not None and x.shape[1] != self.channels:
            raise ValueError(
                f"{self.name} was built for {self.channels}-channel images, got {x.shape[1]}"
            )
        sides = (int(x.shape[-2]), int(x.shape[-1]))
        top = self.max_side or max(sides)
        if not all(self.min_side <= side <= top for side in sides):
            wanted = f"{self.min_side}..{top}" if self.max_side else f">= {self.min_side}"
            raise ValueError(
                f"{self.name} takes image sides {wanted} px, got {sides[0]}x{sides[1]}"
            )


class FeatureNet(fx.GraphModule):
    """A model cut after its last chosen stage; ``forward`` returns one map per chosen stage.

    ``feature_info`` describes the chosen stages (channels, reduction, module), ``default_cfg``
    is the model's (input size, mean, std).
    """

    feature_info: FeatureInfo
    default_cfg: dict[str, Any]
    model_name: str


def feature_extractor(
    model: ZooModel, out_indices: int | Sequence[int] | None = None
) -> FeatureNet:
    """A backbone returning the maps of stages ``out_indices`` of ``model`` (default: all).

    The backbone shares its parameters with ``model``. ``out_indices`` follows timm: a sequence
    of stage indices (negative from the end) or an int ``n`` for the last ``n`` stages.
    """
    info: FeatureInfo | None = getattr(model, "feature_info", None)
    if not isinstance(info, FeatureInfo):
        raise TypeError(f"{type(model).__name__} declares no feature_info")
    chosen = info.resolve(out_indices)
    names = [info[i].module for i in chosen]
    tracer = _StageTracer(names)
    graph = tracer.trace(model)
    missing = [name for name in names if name not in tracer.outputs]
    if missing:
        raise ValueError(f"stage modules {missing} are not called by forward_features")
    outputs = [tracer.outputs[name] for name in names]
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is not None:  # token sequences: return the patch tokens as maps
        converted = []
        for node in outputs:
            with graph.inserting_after(node):
                converted.append(graph.call_function(tokens_to_map, (node, prefix)))
        outputs = converted
    output = next(node for node in graph.nodes if node.op == "output")
    output.args = (outputs,)
    net = FeatureNet(model, graph, class_name="FeatureNet")
    # Drop everything after the last chosen stage (the head, deeper stages) and its modules.
    net.graph.eliminate_dead_code()
    net.graph.lint()
    net.delete_all_unused_submodules()
    net.recompile()
    net.feature_info = FeatureInfo(info[i] for i in chosen)
    net.default_cfg = dict(getattr(model, "default_cfg", {}))
    net.model_name = model.model_name
    net.register_forward_pre_hook(_InputCheck(model))
    net.train(model.training)
    return net
