"""Multiply-add counts from torch's own flop counter, run on the meta device when possible.

A multiply-add (MAC) is one multiplication plus one addition, i.e. two FLOPs in the counter's
convention; papers that quote "FLOPs" for CNNs (ResNet, SE-Net, EfficientNet) mean MACs.
Counting on the meta device allocates nothing and computes nothing, so even EfficientNet-B7 at
600 px is counted instantly, and a model built under ``torch.device("meta")`` can be counted.

Attention counts its two matrix products (QK^T and the weighted sum of V) besides its
projections, on every device: the analysis passes take ``nn.MultiheadAttention``'s ordinary path
(its fused CPU kernel has no flop formula), and CPU's fused scaled-dot-product attention is given
the formula torch uses for the CUDA kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

InputSize = int | Sequence[int] | torch.Tensor


@dataclass
class MacCount:
    """Total multiply-adds of one forward pass (batch 1) and the share of every module.

    ``by_module`` maps dotted module names (``""`` is the whole model) to the multiply-adds
    spent inside that module, children included.
    """

    total: int
    by_module: dict[str, int] = field(default_factory=dict)


def _count_cpu_attention() -> None:
    """Give CPU's fused attention kernel torch's own attention formula, once (torch counts only
    the CUDA kernels and the meta device's decomposition into batched matrix products)."""
    target = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if target is None or target in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(target)
    def cpu_attention_flops(
        query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any
    ) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


_count_cpu_attention()


@contextmanager
def attention_unfused() -> Iterator[None]:
    """``nn.MultiheadAttention`` through its ordinary path (projections and scaled-dot-product
    attention, each visible to counters and tracers) instead of its fused inference kernel."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def resolve_input_size(model: nn.Module, input_size: InputSize | None) -> tuple[int, ...]:
    """``(C, H, W)`` from a side, a ``(C, H, W)``/``(H, W)`` tuple or the model's default_cfg."""
    if isinstance(input_size, torch.Tensor):
        return tuple(input_size.shape[1:])
    cfg = getattr(model, "default_cfg", None) or {}
    channels = int(cfg["input_size"][0]) if "input_size" in cfg else _stem_channels(model)
    if input_size is None:
        if "input_size" not in cfg:
            raise ValueError("give input_size: the model has no default_cfg to take it from")
        return tuple(int(v) for v in cfg["input_size"])
    if isinstance(input_size, int):
        return (channels, input_size, input_size)
    size = tuple(int(v) for v in input_size)
    if len(size) == 2:
        return (channels, *size)
    if len(size) != 3:
        raise ValueError(f"input_size must be (C, H, W), (H, W) or a side, got {input_size!r}")
    return size


def _stem_channels(model: nn.Module) -> int:
    stem_name = getattr(model, "first_conv", None)
    if stem_name:
        stem = model.get_submodule(stem_name)
        if isinstance(stem, nn.Conv2d):
            return stem.in_channels
    return 3


def model_device(model: nn.Module) -> torch.device:
    for tensor in _tensors(model):
        return tensor.device
    return torch.device("cpu")


def _tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then every module's own train/eval flag as it was."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def run_forward(
    model: nn.Module,
    example: torch.Tensor | tuple[int, ...],
    device: str | torch.device | None = "meta",
    *,
    context: Callable[[], Any] | None = None,
) -> Any:
    """One eval-mode, no-grad forward pass of a batch-1 input on ``device``.

    The model itself is neither moved nor changed: when ``device`` differs from where its
    tensors live, the pass runs with stand-in copies of the parameters and buffers swapped in
    (empty ones on the meta device) and the originals swapped back afterwards. When the meta
    pass fails (an op without a meta kernel), the pass is repeated on the model's own device —
    or, for a model that lives on meta, on the CPU with zero-filled stand-ins.
    ``context`` makes a context manager (a flop counter, say) that wraps exactly one attempt.
    """
    home = model_device(model)
    target = torch.device(device) if device is not None else home
    try:
        return _forward_on(model, example, target, home, context)
    except (NotImplementedError, RuntimeError):
        if target.type != "meta":
            raise
    fallback = home if home.type != "meta" else torch.device("cpu")
    return _forward_on(model, example, fallback, home, context)


def _forward_on(
    model: nn.Module,
    example: torch.Tensor | tuple[int, ...],
    target: torch.device,
    home: torch.device,
    context: Callable[[], Any] | None,
) -> Any:
    if isinstance(example, torch.Tensor):
        x = example.to(target)
    else:
        x = torch.zeros((1, *example), device=target)
    fast_meta = _MetaShortcuts() if target.type == "meta" else _nothing()
    with eval_mode(model), torch.no_grad(), attention_unfused(), fast_meta, (
        context() if context else _nothing()
    ):
        if target == home:
            return model(x)
        with _swapped_tensors(model, target):
            return model(x)


@contextmanager
def _swapped_tensors(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Every parameter and buffer replaced by a stand-in on ``device``, then put back exactly.

    (torch.func.functional_call is not used: with a layer shared between two parents it
    leaves a stand-in behind.) Tied tensors share one stand-in, so they stay tied.
    """
    stand_ins: dict[int, torch.Tensor] = {}
    saved: list[tuple[dict[str, Any], str, Any]] = []
    try:
        for module in model.modules():
            for slots in (module._parameters, module._buffers):
                for name, tensor in list(slots.items()):
                    if tensor is None:
                        continue
                    if id(tensor) not in stand_ins:
                        stand_ins[id(tensor)] = _stand_in(tensor, device)
                    saved.append((slots, name, tensor))
                    slots[name] = stand_ins[id(tensor)]
        yield
    finally:
        for slots, name, tensor in reversed(saved):
            slots[name] = tensor


def _stand_in(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "meta":
        return torch.empty_like(tensor, device="meta")
    if tensor.is_meta:  # a meta model counted on a real device: values do not matter
        return torch.zeros_like(tensor, device=device)
    return tensor.detach().to(device)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


class _MetaShortcuts(TorchDispatchMode):
    """Shape-only stand-ins for meta kernels that are slow and cost no multiply-adds.

    Eval-mode batch norm on meta runs a Python decomposition that takes most of the time of a
    meta forward pass (ResNet-1202: seconds); its output is simply shaped like its input. It
    sits below the flop counter, which therefore still sees (and ignores) the op.
    """

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        aten = torch.ops.aten
        # The flop counter decomposes native_batch_norm into the _legit_no_training op.
        if func is aten._native_batch_norm_legit_no_training.default or (
            func is aten.native_batch_norm.default and not args[5]
        ):
            x = args[0]
            if x.is_meta:
                stats = x.new_empty((0,))
                return torch.empty_like(x), stats, stats.clone()
        return func(*args, **kwargs)


def profile_macs(
    model: nn.Module, input_size: InputSize | None = None, *, device: str | None = "meta"
) -> MacCount:
    """Multiply-adds of one batch-1 forward pass in eval mode, in total and per module."""
    example = input_size if isinstance(input_size, torch.Tensor) else None
    size = resolve_input_size(model, input_size)
    counters: list[FlopCounterMode] = []

    def counter() -> FlopCounterMode:
        counters.append(FlopCounterMode(display=False))
        return counters[-1]

    run_forward(model, example[:1] if example is not None else size, device, context=counter)
    flops = counters[-1]
    return MacCount(total=flops.get_total_flops() // 2, by_module=macs_by_module(flops, model))


def macs_by_module(flops: FlopCounterMode, model: nn.Module) -> dict[str, int]:
    """The counter's per-module totals under ``model.named_modules()`` names.

    The counter keys modules as ``"<RootClass>.<path>"``, and a module reachable by two paths
    (a shared layer) may be filed under either; resolving the path to the module object and back
    gives every module its first name, the one ``named_modules()`` and the state-dict use.
    """
    canonical = {module: name for name, module in model.named_modules()}
    root = type(model).__name__
    by_module: dict[str, int] = {}
    for key, per_op in flops.get_flop_counts().items():
        if key == "Global":
            continue
        path = "" if key == root else key.removeprefix(root + ".")
        try:
            name = canonical.get(model.get_submodule(path), path)
        except AttributeError:
            name = path
        by_module[name] = by_module.get(name, 0) + sum(per_op.values()) // 2
    return by_module


def count_macs(
    model: nn.Module, input_size: InputSize | None = None, *, device: str | None = "meta"
) -> int:
    """Multiply-adds (= FLOPs / 2) of one image through ``model`` in eval mode.

    ``input_size`` is ``(C, H, W)``, ``(H, W)``, a side, or an example tensor (its first image is
    used); by default the model's ``default_cfg['input_size']``.
    """
    return profile_macs(model, input_size, device=device).total
