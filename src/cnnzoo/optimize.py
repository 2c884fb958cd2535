"""A faster inference copy of a model: BatchNorm folding, channels-last, torch.compile or ORT.

:func:`optimize` applies only what it measures to be faster on the example input, checks the
result against the untouched eager model, and says what it did in ``.report``. The caller's model
is never modified: everything happens on a deep copy in eval mode.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._pytree import tree_leaves

from cnnzoo.errors import CnnzooError, UsageError
from cnnzoo.runtime import RUNTIMES, OnnxModel, installed_runtimes

if TYPE_CHECKING:
    from cnnzoo.quantize import QuantizedModel

__all__ = [
    "OptimizationError",
    "OptimizeReport",
    "OptimizedModel",
    "find_conv_bn_pairs",
    "fold_batchnorms",
    "fold_conv_bn",
    "optimize",
]

log = logging.getLogger(__name__)

# Default tolerance on max|optimized - eager|, relative to the eager output's largest magnitude.
DEFAULT_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
BACKENDS = ("auto", "eager", "inductor", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "int8")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class OptimizationError(CnnzooError):
    """The optimized model's outputs differ from the eager model's beyond the tolerance."""


# --- BatchNorm folding ------------------------------------------------------------------------


def fold_conv_bn(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, bn: _BatchNorm) -> None:
    """Fold an eval-mode ``bn`` that reads ``conv``'s output into ``conv``'s weight and bias.

    ``bn(conv(x)) = conv'(x)`` with ``W' = W * s`` and ``b' = (b - mean) * s + beta`` where
    ``s = gamma / sqrt(var + eps)`` per output channel (grouped convs included: each output
    channel has its own filter). The arithmetic is done in float64, then cast back.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    if conv.out_channels != bn.num_features:
        raise ValueError(
            f"conv has {conv.out_channels} output channels, BatchNorm {bn.num_features} features"
        )
    weight = conv.weight.detach()
    dtype = weight.dtype
    mean = bn.running_mean.detach().double()
    scale = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    new_bias = (bias - mean) * scale
    if bn.bias is not None:
        new_bias = new_bias + bn.bias.detach().double()
    shape = (-1,) + (1,) * (weight.dim() - 1)
    with torch.no_grad():
        conv.weight.copy_((weight.double() * scale.view(shape)).to(dtype))
    conv.bias = nn.Parameter(new_bias.to(dtype), requires_grad=conv.weight.requires_grad)


class _LeafTracer(torch.fx.Tracer):
    """Traces one forward method, treating every module it calls as an opaque call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


class _FeaturesOf(nn.Module):
    # A model whose forward cannot be traced (e.g. input checks branching on shapes) usually
    # still has a traceable forward_features, where the stem's conv -> bn lives.
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> Any:
        return self.inner.forward_features(x)


def _trace_calls(module: nn.Module) -> list[torch.fx.Node] | None:
    """The call_module nodes of ``module``'s forward (targets relative to it), or None."""
    attempts: list[tuple[nn.Module, str]] = [(module, "")]
    if callable(getattr(module, "forward_features", None)):
        attempts.append((_FeaturesOf(module), "inner."))
    for root, prefix in attempts:
        try:
            graph = _LeafTracer().trace(root)
        except Exception:  # untraceable Python control flow: the caller tries the children
            continue
        nodes = [n for n in graph.nodes if n.op == "call_module"]
        for node in nodes:
            node.meta["cnnzoo_target"] = str(node.target).removeprefix(prefix)
        return nodes
    return None


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` for every BatchNorm that reads a conv's output and nothing else.

    Each module's own forward is traced with torch.fx (its submodules kept as opaque calls), so
    the pairs are found wherever they are wired: in Sequentials, in blocks that call
    ``self.bn1(self.conv1(x))``, in a model's ``forward_features``. A conv whose output is also
    used elsewhere, a module called more than once, and modules inside a forward that cannot be
    traced are left alone (their children are still searched).
    """
    calls: dict[int, int] = {}
    candidates: list[tuple[str, str, nn.Module, nn.Module]] = []
    for prefix, module in model.named_modules():
        if not any(True for _ in module.children()):
            continue
        nodes = _trace_calls(module)
        if nodes is None:
            continue
        for node in nodes:
            target = module.get_submodule(node.meta["cnnzoo_target"])
            calls[id(target)] = calls.get(id(target), 0) + 1
            if not isinstance(target, _BatchNorm) or len(node.args) != 1 or node.kwargs:
                continue
            source = node.args[0]
            if not isinstance(source, torch.fx.Node) or source.op != "call_module":
                continue
            conv = module.get_submodule(source.meta["cnnzoo_target"])
            if type(conv) not in _CONVS or len(source.users) != 1:
                continue
            if conv.out_channels != target.num_features or target.running_mean is None:
                continue
            names = [
                f"{prefix}.{n}" if prefix else n
                for n in (source.meta["cnnzoo_target"], node.meta["cnnzoo_target"])
            ]
            candidates.append((names[0], names[1], conv, target))
    return [
        (conv_name, bn_name)
        for conv_name, bn_name, conv, bn in candidates
        if calls[id(conv)] == 1 and calls[id(bn)] == 1
    ]


def fold_batchnorms(model: nn.Module) -> list[tuple[str, str]]:
    """Fold, in place, every BatchNorm found by :func:`find_conv_bn_pairs` into its conv.

    The BatchNorm is replaced by ``nn.Identity``. Only for eval mode: the model is switched to
    it. Returns the folded ``(conv_name, bn_name)`` pairs.
    """
    model.eval()
    pairs = find_conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        fold_conv_bn(model.get_submodule(conv_name), model.get_submodule(bn_name))
        parent_name, _, attr = bn_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, nn.Identity())
    return pairs


# --- measuring --------------------------------------------------------------------------------


def interleaved_medians(
    fns: dict[str, Callable[[], Any]],
    *,
    warmup: int = 2,
    rounds: int = 7,
    budget_s: float = 3.0,
    min_turn_s: float = 0.0,
) -> dict[str, float]:
    """Median seconds per call of each function, timed in turns (A, B, C, then B, C, A, ...).

    Taking turns exposes every candidate to the same drift in machine load, so their ratios
    stay meaningful on a busy machine; the order rotates every turn, so that no candidate always
    runs right after the same one (whose run may leave the caches, or its runtime's threads, in
    a state that helps or hurts the next). A turn calls a function as many times as fills
    ``min_turn_s`` (judged from its last warm-up call), so that a call of a few milliseconds is
    not timed from one sample of the scheduler's noise. Stops after ``rounds`` turns, or after
    3 once ``budget_s`` has passed.
    """
    calls: dict[str, int] = {}
    for key, fn in fns.items():
        last = math.inf  # no warm-up call: one call a turn
        for _ in range(max(warmup, 1) if min_turn_s > 0 else warmup):
            t0 = time.perf_counter()
            fn()
            last = time.perf_counter() - t0
        calls[key] = max(1, math.ceil(min_turn_s / max(last, 1e-9)))
    times: dict[str, list[float]] = {key: [] for key in fns}
    order = list(fns.items())
    start = time.perf_counter()
    for turn in range(rounds):
        shift = turn % len(order)
        for key, fn in order[shift:] + order[:shift]:
            count = calls[key]
            t0 = time.perf_counter()
            for _ in range(count):
                fn()
            times[key].append((time.perf_counter() - t0) / count)
        if turn >= 2 and time.perf_counter() - start > budget_s:
            break
    return {key: statistics.median(values) for key, values in times.items()}


def _max_diff(output: Any, reference: Any) -> tuple[float, float]:
    """(max abs difference, max abs reference value) over every tensor in the outputs."""
    got, want = tree_leaves(output), tree_leaves(reference)
    if len(got) != len(want):
        return math.inf, 0.0
    diff, scale = 0.0, 0.0
    for a, b in zip(got, want, strict=True):
        if not isinstance(b, torch.Tensor):
            continue
        if not isinstance(a, torch.Tensor) or a.shape != b.shape:
            return math.inf, 0.0
        if b.numel():
            diff = max(diff, (a.detach().double() - b.detach().double()).abs().max().item())
            scale = max(scale, b.detach().double().abs().max().item())
    return diff, scale


# --- the result -------------------------------------------------------------------------------


@dataclass
class OptimizeReport:
    """What :func:`optimize` applied and measured (times are medians per call, milliseconds)."""

    folded_batchnorms: int = 0
    channels_last: bool = False
    backend: str = "eager"
    timings_ms: dict[str, float] = field(default_factory=dict)
    max_abs_diff: float = 0.0
    output_scale: float = 0.0
    tolerance: float = 0.0
    example_shape: tuple[int, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float | None:
        """Eager (unfolded, contiguous) time over the chosen configuration's time."""
        base, best = self.timings_ms.get("eager"), self.timings_ms.get(self.chosen_key)
        return base / best if base and best else None

    @property
    def chosen_key(self) -> str:
        layout = "channels_last" if self.channels_last else "contiguous"
        return f"{self.backend}+folded+{layout}"

    def __str__(self) -> str:
        lines = [
            f"folded {self.folded_batchnorms} BatchNorms; "
            f"{'channels-last' if self.channels_last else 'contiguous'} layout; "
            f"backend {self.backend}",
            "timings on "
            + "x".join(map(str, self.example_shape))
            + ": "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in self.timings_ms.items()),
            f"max |optimized - eager| = {self.max_abs_diff:.3g} "
            f"(allowed {self.tolerance:g} x output scale {self.output_scale:.3g})",
        ]
        if self.speedup is not None:
            lines.append(f"speed-up over eager: {self.speedup:.2f}x")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


class InferenceOnly(nn.Module):
    """Base of the inference-only wrappers (optimized, int8): the wrapped model's own attributes
    (num_classes, default_cfg, ...) read through, and training is refused."""

    def __init__(self, module: nn.Module | None) -> None:
        super().__init__()
        self.module = module

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            module = super().__getattr__("module")
            if module is None:
                raise
            return getattr(module, name)

    def train(self, mode: bool = True) -> InferenceOnly:
        if mode:
            raise RuntimeError(f"{type(self).__name__} is for inference only; keep the original")
        return super().train(False)


class OptimizedModel(InferenceOnly):
    """An inference-only callable module: ``model(x)`` runs the chosen fast path.

    ``.module`` is the folded eager model it was built from; ``.report`` says what was applied.
    Inputs of another shape than the example go through the compiled model too (inductor
    recompiles) except with ONNX Runtime and OpenVINO, whose graph is exported for the example's
    shape: those run on the folded eager module.
    """

    def __init__(
        self,
        module: nn.Module,
        runner: Callable[[torch.Tensor], Any],
        report: OptimizeReport,
        *,
        runner_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(module)
        self.report = report
        # Kept out of _modules: the runner wraps ``module`` and must not appear twice in
        # state_dict() or named_modules().
        self.__dict__["_runner"] = runner
        self._runner_shape = runner_shape

    def forward(self, x: torch.Tensor) -> Any:
        with torch.inference_mode():
            fallback = self._runner_shape is not None and tuple(x.shape) != self._runner_shape
            runner = self.module if fallback else self._runner
            # ONNX graphs read NCHW arrays; everything else runs the layout that was chosen.
            onnx_graph = self.report.backend in RUNTIMES and not fallback
            if self.report.channels_last and x.dim() == 4 and not onnx_graph:
                x = x.contiguous(memory_format=torch.channels_last)
            return runner(x)


# --- candidates -------------------------------------------------------------------------------


def _have_cxx_compiler() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)


def _compile_inductor(model: nn.Module) -> Callable[[torch.Tensor], Any]:
    # Freezing turns the weights into constants, which lets inductor pre-pack them for oneDNN
    # convolutions: the main win on CPU for inference.
    return torch.compile(model, backend="inductor", options={"freezing": True})


def _onnx_runners(
    model: nn.Module, example: torch.Tensor, runtimes: list[str]
) -> dict[str, OnnxModel]:
    """The model exported once to ONNX (for the example's shape) and loaded by each runtime."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        _quiet_onnx_export(model, example, path)
        return {name: OnnxModel(path, name, name=f"{name} graph") for name in runtimes}


def _quiet_onnx_export(model: nn.Module, example: torch.Tensor, path: str, **kwargs: Any) -> None:
    import contextlib
    import io
    import warnings

    # The exporter prints progress lines ("[torch.onnx] Obtain model graph ...") to stdout.
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), path, dynamo=True, external_data=False, **kwargs)


# --- optimize ---------------------------------------------------------------------------------


def optimize(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    tolerance: float | None = None,
    compile: bool = True,
    channels_last: bool | str = "auto",
    backend: str = "auto",
    precision: str = "fp32",
    calibration: Any = None,
    **quantize_options: Any,
) -> OptimizedModel | QuantizedModel:
    """An inference copy of ``model`` that is as fast as this machine allows on such inputs.

    Steps, on a deep copy in eval mode (``model`` itself is left as it was):

    1. every BatchNorm that directly follows a conv is folded into the conv (exact up to float
       rounding);
    2. channels-last memory format is used if it measures faster on ``example_input``
       (``channels_last="auto"``), or as forced by ``True``/``False``;
    3. with ``compile=True`` the model is compiled: ``backend="auto"`` tries torch.compile with
       inductor (needs a C++ compiler on CPU), ONNX Runtime and OpenVINO on CPU (each only if
       installed; OpenVINO kept to float32 arithmetic) and keeps whichever measures fastest,
       eager included; ``"inductor"``, ``"onnxruntime"`` or ``"openvino"`` force one (falling
       back to eager, with a note, if it fails);
       ``"eager"`` compiles nothing. A backend that fails, or whose outputs differ, is dropped
       and the reason is logged and noted in the report;
    4. the final outputs on ``example_input`` are checked against the original eager model: the
       largest absolute difference must be at most ``tolerance`` times the largest absolute
       eager output (default tolerance: 1e-4 for float32, 1e-2 for float16/bfloat16, 1e-8 for
       float64); otherwise :class:`OptimizationError` is raised.

    Timings (median milliseconds per call on ``example_input``) and choices are in
    ``result.report``. The result is for inference only: it runs under ``torch.inference_mode``.

    ``precision="int8"`` changes the answers slightly, so it is used only when asked for: it
    returns :func:`cnnzoo.quantize`'s :class:`~cnnzoo.quantize.QuantizedModel`, calibrated on
    ``calibration`` and timed on ``example_input``, on the fastest int8 runtime (``backend``
    ``"auto"``, ``"onnxruntime"`` or ``"openvino"``) whose answers agree with the float32
    model's; ``quantize_options`` (``validation``, ``method``, ``samples``, ...) go to it.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        return _optimize_int8(model, example_input, backend, calibration, quantize_options)
    if calibration is not None or quantize_options:
        extra = ", ".join(["calibration", *quantize_options][: 1 + len(quantize_options)])
        raise UsageError(f"{extra}: only for precision='int8'")
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if channels_last not in ("auto", True, False):
        raise UsageError(f"channels_last must be 'auto', True or False, got {channels_last!r}")
    if not isinstance(example_input, torch.Tensor):
        raise UsageError("example_input must be a tensor (a batch shaped like real inputs)")
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE.get(example_input.dtype, 1e-8)
    report = OptimizeReport(tolerance=float(tolerance), example_shape=tuple(example_input.shape))

    def note(message: str) -> None:
        log.info("optimize: %s", message)
        report.notes.append(message)

    work = copy.deepcopy(model).eval()
    for parameter in work.parameters():
        parameter.requires_grad_(False)
    example = example_input.detach()
    with torch.inference_mode():
        reference = work(example)

    def measure(fns: dict[str, tuple[Callable[[torch.Tensor], Any], torch.Tensor]]) -> None:
        with torch.inference_mode():
            medians = interleaved_medians(
                {key: partial(fn, inp) for key, (fn, inp) in fns.items()},
                warmup=1,
                rounds=5,
                budget_s=1.5,
                min_turn_s=0.02,  # calls of a small model last microseconds
            )
        # A configuration timed again beside new rivals keeps its first figure in the report,
        # which is the one the earlier choice was made on; comparisons use the fresh ones.
        for key, seconds in medians.items():
            report.timings_ms.setdefault(key, seconds * 1e3)
            latest[key] = seconds * 1e3

    latest: dict[str, float] = {}

    folded = copy.deepcopy(work)
    report.folded_batchnorms = len(fold_batchnorms(folded))

    # Layout: channels-last only means something for 4-D inputs.
    nchw = example.contiguous()
    layouts = {"eager": (work, example), "eager+folded+contiguous": (folded, nchw)}
    nhwc_model: nn.Module | None = None
    if example.dim() == 4 and channels_last is not False:
        nhwc_model = copy.deepcopy(folded).to(memory_format=torch.channels_last)
        nhwc = example.contiguous(memory_format=torch.channels_last)
        layouts["eager+folded+channels_last"] = (nhwc_model, nhwc)
    elif channels_last is True:
        note("channels-last needs 4-D inputs; kept the contiguous layout")
    measure(layouts)
    del work  # the unfolded copy was only needed for the reference timing
    timings = report.timings_ms
    if nhwc_model is not None and (
        channels_last is True
        or timings["eager+folded+channels_last"] < timings["eager+folded+contiguous"]
    ):
        folded, x, report.channels_last = nhwc_model, nhwc, True
    else:
        x = nchw
    nhwc_model = None
    layout = "channels_last" if report.channels_last else "contiguous"
    eager_key = f"eager+folded+{layout}"

    candidates: list[str] = []
    if compile and backend in ("auto", "inductor"):
        candidates.append("inductor")
    for runtime in RUNTIMES:
        if compile and backend in ("auto", runtime):
            if runtime in installed_runtimes():
                candidates.append(runtime)
            elif backend == runtime:
                note(f"{runtime} is not installed (pip install {runtime})")
    if not compile and backend not in ("auto", "eager"):
        note(f"compile=False: backend {backend!r} not used")

    working: dict[str, tuple[Callable[[torch.Tensor], Any], tuple[int, ...] | None]] = {}
    onnx_runners: dict[str, OnnxModel] = {}
    for name in candidates:
        try:
            if name == "inductor":
                if example.device.type == "cpu" and not _have_cxx_compiler():
                    raise RuntimeError("no C++ compiler (g++/c++/clang++) for inductor on CPU")
                fn, shape = _compile_inductor(folded), None
            else:
                if example.device.type != "cpu":
                    raise RuntimeError(f"the {name} path here is CPU-only")
                if not onnx_runners:  # one export serves every runtime
                    onnx_runners.update(
                        _onnx_runners(folded, nchw, [c for c in candidates if c in RUNTIMES])
                    )
                fn, shape = onnx_runners[name], tuple(example.shape)
            with torch.inference_mode():
                diff, scale = _max_diff(fn(nchw if name in RUNTIMES else x), reference)
            if not diff <= tolerance * (scale or 1.0):
                raise RuntimeError(f"outputs differ from eager by {diff:.3g} (scale {scale:.3g})")
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            note(f"{name} not used: {type(exc).__name__}: {first_line}")
            if name == "inductor":
                torch._dynamo.reset()
            continue
        working[name] = (fn, shape)

    runner: Callable[[torch.Tensor], Any] = folded
    runner_shape: tuple[int, ...] | None = None
    if working:
        # ONNX graphs take NCHW arrays: handing them channels-last input would cost a copy.
        measure(
            {eager_key: (folded, x)}
            | {
                f"{name}+folded+{layout}": (fn, nchw if name in RUNTIMES else x)
                for name, (fn, _) in working.items()
            }
        )
        ms = {name: latest[f"{name}+folded+{layout}"] for name in working}
        best = backend if backend in working else min(ms, key=ms.__getitem__)
        if best == backend or ms[best] < latest[eager_key]:  # a forced backend even if slower
            (runner, runner_shape), report.backend = working[best], best
        chosen_ms = ms.get(report.backend, latest[eager_key])
        for name in working:
            if name != report.backend:
                note(f"{name} not used: {ms[name]:.2f} ms vs {chosen_ms:.2f} ms {report.backend}")

    with torch.inference_mode():
        output = runner(nchw if report.backend in RUNTIMES else x)
    report.max_abs_diff, report.output_scale = _max_diff(output, reference)
    allowed = tolerance * (report.output_scale or 1.0)
    if not report.max_abs_diff <= allowed:
        raise OptimizationError(
            f"optimized outputs differ from eager by {report.max_abs_diff:.3g} on the example "
            f"input, more than {tolerance:g} x output scale {report.output_scale:.3g}"
        )
    return OptimizedModel(folded, runner, report, runner_shape=runner_shape)


def _optimize_int8(
    model: nn.Module,
    example: torch.Tensor,
    backend: str,
    calibration: Any,
    options: dict[str, Any],
) -> QuantizedModel:
    from cnnzoo.quantize import quantize

    if calibration is None:
        raise UsageError(
            "precision='int8' needs calibration data: calibration=images prepared like the "
            "inputs (a tensor, (images, labels) or a DataLoader)"
        )
    if backend not in ("auto", *RUNTIMES):
        raise UsageError(f"int8 runs on {' or '.join(RUNTIMES)}, not backend {backend!r}")
    return quantize(model, calibration, example=example, backend=backend, **options)
