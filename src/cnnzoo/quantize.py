"""int8 inference: static post-training quantization with ONNX Runtime's tools, checked against
the float32 model.

:func:`quantize` works on a copy of the model: BatchNorms are folded (``cnnzoo.optimize``), the
network is exported to ONNX with a dynamic batch and the file is checked against eager
(``cnnzoo.export``), ``onnxruntime.quantization`` measures activation ranges on the calibration
images and writes a QDQ graph (per-channel int8 weights, uint8 activations; on a CPU without
VNNI the weights use 7 bits, ``reduce_range``, as ONNX Runtime advises against the saturation of
AVX2's u8s8 instructions). That graph then runs on every runtime installed (ONNX Runtime, and
OpenVINO with the ``openvino`` extra). With OpenVINO, NNCF (OpenVINO's post-training quantizer,
in the same extra) quantizes the same float32 graph too: it places its quantizers where
OpenVINO has int8 kernels, and OpenVINO runs its graph faster than ONNX Runtime's (1.07x on
resnet18, 2x on efficientnet_b0, measured). The fastest (graph, runtime) pair whose top-1
answers agree with the float32 model's on the check images is kept; the ``.onnx`` written is that
graph. The arithmetic is all ONNX Runtime's, NNCF's and OpenVINO's.

With labelled ``validation`` data the float32 and int8 top-1 are measured, and
``sensitivity=True`` quantizes one layer at a time, records each one's cost in accuracy and
keeps the costliest layers in float32 until the loss is at most ``max_drop`` points.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib.util
import io
import logging
import math
import os
import platform
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnzoo.errors import CnnzooError, UsageError
from cnnzoo.optimize import InferenceOnly, fold_batchnorms, interleaved_medians
from cnnzoo.runtime import RUNTIMES, OnnxModel, _first_line, installed_runtimes, write_onnx

__all__ = [
    "DEFAULT_MAX_DROP",
    "DEFAULT_SAMPLES",
    "METHODS",
    "MIN_SAMPLES",
    "Int8Scheme",
    "LayerCost",
    "QuantizationError",
    "QuantizeReport",
    "QuantizedModel",
    "int8_scheme",
    "quantize",
]

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
BACKENDS = ("auto", *RUNTIMES)
QUANTIZERS = ("onnxruntime", "nncf")  # what wrote the int8 graph
DEFAULT_SAMPLES = 512
# Fewer images than this give activation ranges that depend on which images were drawn.
MIN_SAMPLES = 32
DEFAULT_MAX_DROP = 0.5  # accuracy points
DEFAULT_MIN_AGREEMENT = 0.9
CHECK_SAMPLES = 64  # images the top-1 agreement is checked on when there is no validation data
CALIBRATION_BATCH = 16
# The ops whose quantization changes numbers, grouped by the module they come from to make the
# "layers" of the sensitivity analysis (reshapes and the like only move int8 values around).
_COMPUTE_OPS = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Sigmoid", "Relu", "Clip",
    "LeakyRelu", "GlobalAveragePool", "AveragePool", "MaxPool", "Concat", "Softmax",
}  # fmt: skip


class QuantizationError(CnnzooError):
    """The int8 model disagrees with the float32 model more than allowed."""


# --- what the CPU does well -------------------------------------------------------------------


@dataclass(frozen=True)
class Int8Scheme:
    """Quantization types chosen for this CPU, and why."""

    activation_type: str  # "uint8"
    weight_type: str  # "int8"
    reduce_range: bool
    cpu: str  # the instruction set the choice was made on


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_scheme(flags: set[str] | None = None) -> Int8Scheme:
    """uint8 activations and int8 weights (ONNX Runtime's u8s8, its fastest on x86 and ARM).

    x86 CPUs with VNNI (``avx512_vnni``, ``avx_vnni``, AMX) multiply u8 by s8 into int32
    exactly. Without VNNI, AVX2's ``vpmaddubsw`` adds two u8 x s8 products into int16, which can
    saturate: ONNX Runtime's advice is ``reduce_range`` (7-bit weights) there. ARM's dot-product
    instructions accumulate into int32.
    """
    flags = _cpu_flags() if flags is None else flags
    machine = platform.machine().lower()
    vnni = sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    if vnni:
        return Int8Scheme("uint8", "int8", False, "x86 with " + ", ".join(vnni))
    if machine in ("arm64", "aarch64") and ("asimddp" in flags or not flags):
        return Int8Scheme("uint8", "int8", False, f"{machine} with dot-product instructions")
    described = "AVX2 without VNNI" if "avx2" in flags else f"{machine or 'unknown CPU'}, no VNNI"
    return Int8Scheme("uint8", "int8", True, described)


# --- the result -------------------------------------------------------------------------------


@dataclass
class LayerCost:
    """One layer quantized alone: its top-1 (%) and the points it costs against float32."""

    layer: str
    ops: list[str]
    top1: float
    cost: float


@dataclass
class QuantizeReport:
    """What :func:`quantize` did and measured (times: median ms per call on the timing batch)."""

    method: str = "minmax"
    samples: int = 0
    per_channel: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    reduce_range: bool = False
    cpu: str = ""
    backend: str = "onnxruntime"  # the runtime the int8 graph runs on
    quantizer: str = "onnxruntime"  # what wrote the graph: ONNX Runtime's tools or NNCF
    folded_batchnorms: int = 0
    quantized_nodes: int = 0
    fp32_layers: list[str] = field(default_factory=list)
    check_samples: int = 0
    agreement: float = 0.0  # fraction of check images whose top-1 int8 answer is fp32's
    max_abs_diff: float = 0.0  # largest |int8 - fp32| logit difference on the check images
    output_scale: float = 0.0  # largest |fp32| logit there
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    timing_shape: tuple[int, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)
    validation_samples: int = 0
    fp32_top1: float | None = None  # % on the validation images
    int8_top1: float | None = None
    int8_top1_all: float | None = None  # before any layer was kept in float32 by sensitivity
    max_drop: float | None = None
    sensitivity: list[LayerCost] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The chosen runtime, and the quantizer when it is not ONNX Runtime's own."""
        return _candidate(self.quantizer, self.backend)

    @property
    def speedup(self) -> float | None:
        """float32 ONNX Runtime time over the chosen int8 graph and runtime's time."""
        base = self.timings_ms.get("fp32 onnxruntime")
        best = self.timings_ms.get(f"int8 {self.label}")
        return base / best if base and best else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timing_shape"] = list(self.timing_shape)
        data["speedup"] = self.speedup
        return data

    def __str__(self) -> str:
        types = f"{self.weight_type} weights{' (7-bit)' if self.reduce_range else ''}"
        scales = "per-channel" if self.per_channel else "per-tensor"
        how = (
            f"NNCF's post-training quantization (its default preset) on {self.samples} images"
            if self.quantizer == "nncf"
            else f"{self.method} calibration on {self.samples} images; {scales} {types}, "
            f"{self.activation_type} activations for {self.cpu}"
        )
        lines = [
            f"int8 ({self.label}): {how}; "
            f"{self.folded_batchnorms} BatchNorms folded; {self.quantized_nodes} ops quantized"
            + (f", {len(self.fp32_layers)} layers kept in float32" if self.fp32_layers else ""),
            f"top-1 agreement with float32 {100 * self.agreement:.2f}% on {self.check_samples} "
            f"images (required {100 * self.min_agreement:.0f}%); largest logit difference "
            f"{self.max_abs_diff:.3g} (logits up to {self.output_scale:.3g})",
        ]
        if self.fp32_top1 is not None and self.int8_top1 is not None:
            every = ""
            if self.sensitivity and self.int8_top1_all is not None:
                every = f"; with every layer int8 {self.int8_top1_all:.2f}%"
            lines.append(
                f"top-1 on {self.validation_samples} validation images: float32 "
                f"{self.fp32_top1:.2f}%, int8 {self.int8_top1:.2f}% "
                f"({self.int8_top1 - self.fp32_top1:+.2f} points{every})"
            )
        if self.timings_ms:
            shape = "x".join(map(str, self.timing_shape))
            lines.append(
                f"timings on {shape}: "
                + ", ".join(f"{k} {v:.2f} ms" for k, v in self.timings_ms.items())
                + (f"; int8 is {self.speedup:.2f}x float32" if self.speedup else "")
            )
        if self.fp32_layers:
            lines.append("kept in float32: " + ", ".join(self.fp32_layers))
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


class QuantizedModel(InferenceOnly):
    """An int8 inference module: ``model(x)`` runs the quantized graph on the chosen runtime.

    ``.module`` is the folded float32 model it was built from (None when it came from an ONNX
    file), ``.report`` what was done and measured, ``.onnx`` the QDQ graph's bytes and
    :meth:`save` writes it as a ``.onnx`` file any ONNX runtime can load.
    """

    def __init__(
        self, module: nn.Module | None, runner: OnnxModel, onnx_bytes: bytes, report: QuantizeReport
    ) -> None:
        super().__init__(module)
        self.report = report
        self.onnx = onnx_bytes
        self.runner = runner

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self.runner.input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.runner(x)

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write the int8 graph to ``path`` (atomically), with cnnzoo ``metadata`` if given (the
        report is added to it under ``"quantization"``)."""
        meta = dict(metadata or {})
        meta.setdefault("precision", "int8")
        meta["quantization"] = self.report.to_dict()
        return write_onnx(self.onnx, path, meta)


# --- data -------------------------------------------------------------------------------------


def _batches(data: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(images, labels or None) batches of a tensor, an (x, y) pair or an iterable of either."""
    if isinstance(data, torch.Tensor):
        yield data, None
        return
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        if data[0].dim() == 4 and isinstance(data[1], torch.Tensor) and data[1].dim() == 1:
            yield data[0], data[1]
            return
    if not isinstance(data, Iterable):
        raise UsageError(
            f"calibration data must be a tensor (N, C, H, W), an (images, labels) pair or an "
            f"iterable of batches, got {type(data).__name__}"
        )
    for batch in data:
        if isinstance(batch, torch.Tensor):
            yield batch, None
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            labels = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
            yield batch[0], labels
        else:
            raise UsageError(
                f"a calibration batch must be a tensor or an (images, labels) pair, got "
                f"{type(batch).__name__}"
            )


def _gather(data: Any, limit: int | None, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Up to ``limit`` images (float32, CPU) and their labels, when every batch has them."""
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] | None = []
    count = 0
    for x, y in _batches(data):
        if x.dim() != 4:
            raise UsageError(f"{what} images must be (N, C, H, W), got shape {tuple(x.shape)}")
        if images and x.shape[1:] != images[0].shape[1:]:
            raise UsageError(
                f"{what} images differ in shape: {tuple(images[0].shape[1:])} and "
                f"{tuple(x.shape[1:])}"
            )
        take = x.shape[0] if limit is None else min(x.shape[0], limit - count)
        images.append(x[:take].detach().to("cpu", torch.float32))
        if y is None or labels is None:
            labels = None
        else:
            labels.append(y[:take].detach().to("cpu", torch.int64))
        count += take
        if limit is not None and count >= limit:
            break
    if not images:
        raise UsageError(f"the {what} data is empty")
    return torch.cat(images), (torch.cat(labels) if labels else None)


# --- ONNX Runtime's quantization tools ----------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # onnxruntime.quantization logs and warns per tensor; what matters is checked afterwards.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


class _Progress:
    """A rich progress bar on stderr when asked for, or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[], None]]:
        if not self.enabled:
            yield lambda: None
            return
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda: bar.advance(task)


def _reader(images: np.ndarray, input_name: str, step: Callable[[], None]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Batches of the calibration images; ranges of batches for the histogram methods."""

        def __init__(self) -> None:
            n = len(images)
            self.batches = [
                images[i : i + CALIBRATION_BATCH] for i in range(0, n, CALIBRATION_BATCH)
            ]
            self.position, self.end = 0, len(self.batches)

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.position, self.end = start_index, min(end_index, len(self.batches))

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.position >= self.end:
                return None
            batch = self.batches[self.position]
            self.position += 1
            step()
            return {input_name: batch}

    return Reader()


@dataclass
class _Graph:
    """The pre-processed float32 graph and the layers (module -> node names) of its ops."""

    path: Path
    input_name: str
    layers: dict[str, list[str]]  # module name ("" for the top level) -> quantizable nodes
    ops: dict[str, str]  # node name -> op type


def _module_of(node: Any) -> str | None:
    """The module a node of torch's ONNX export came from (its name scope minus the op)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return str(scopes[-2]) if isinstance(scopes, list) and len(scopes) >= 2 else ""
    return None


def _prepare_graph(exported: Path, out: Path) -> _Graph:
    """ONNX Runtime's pre-processing (shape inference, graph optimisation), then every node named
    and traced back to the module it came from (pre-processing drops the export's scopes)."""
    import onnx
    from onnxruntime.quantization import quant_pre_process
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    original = onnx.load(str(exported))
    module_of_output = {
        output: module
        for node in original.graph.node
        if (module := _module_of(node)) is not None
        for output in node.output
    }
    with _quiet():
        quant_pre_process(str(exported), str(out))
    graph = onnx.load(str(out))
    consumers: dict[str, list[Any]] = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    seen: set[str] = set()
    modules: dict[int, str] = {}
    for index, node in enumerate(graph.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)
        found = [module_of_output[o] for o in node.output if o in module_of_output]
        if found:
            modules[id(node)] = found[0]
    # Nodes made by pre-processing (an inlined HardSwish, say) belong to their consumer's module.
    for node in reversed(graph.graph.node):
        if id(node) not in modules:
            users = [u for o in node.output for u in consumers.get(o, []) if id(u) in modules]
            modules[id(node)] = modules[id(users[0])] if users else ""
    onnx.save(graph, str(out))
    quantizable = (set(QDQRegistry) | set(QLinearOpsRegistry)) & _COMPUTE_OPS
    layers: dict[str, list[str]] = {}
    for node in graph.graph.node:
        if node.op_type in quantizable:
            layers.setdefault(modules[id(node)], []).append(node.name)
    ops = {node.name: node.op_type for node in graph.graph.node}
    return _Graph(out, graph.graph.input[0].name, layers, ops)


# --- measuring --------------------------------------------------------------------------------


def _logits(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    chunks = [run(images[i : i + 256]) for i in range(0, len(images), 256)]
    return torch.cat(chunks).float()


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == labels).float().mean())


def _agreement(logits: torch.Tensor, reference: torch.Tensor) -> tuple[float, float, float]:
    """(top-1 agreement, max |difference|, max |reference|)."""
    agree = float((logits.argmax(1) == reference.argmax(1)).float().mean())
    diff = float((logits - reference).abs().max())
    return agree, diff, float(reference.abs().max())


# --- quantize ---------------------------------------------------------------------------------


def quantize(
    model: nn.Module | str | Path,
    calibration: Any,
    *,
    samples: int = DEFAULT_SAMPLES,
    method: str = "minmax",
    backend: str = "auto",
    quantizer: str = "auto",
    validation: Any = None,
    sensitivity: bool = False,
    max_drop: float = DEFAULT_MAX_DROP,
    exclude: Sequence[str] = (),
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    per_channel: bool = True,
    example: torch.Tensor | None = None,
    progress: bool = False,
) -> QuantizedModel:
    """An int8 copy of ``model`` (an ``nn.Module`` or a float32 ONNX file), checked against it.

    ``calibration``: model inputs, prepared exactly as at inference (normalised): a tensor
    (N, C, H, W), an ``(images, labels)`` pair, or an iterable of such batches (a DataLoader);
    the first ``samples`` images are used (at least :data:`MIN_SAMPLES`). ``method``: how
    activation ranges are set from them, ``"minmax"``, ``"entropy"`` or ``"percentile"``
    (ONNX Runtime's calibrators). ``backend``: the runtime for the int8 graph, ``"auto"`` (the
    fastest installed one that passes the check), ``"onnxruntime"`` or ``"openvino"``.
    ``quantizer``: what writes the int8 graph, ``"onnxruntime"`` (its tools), ``"nncf"`` (for
    OpenVINO) or ``"auto"``: ONNX Runtime's, and NNCF's too where OpenVINO is a candidate and
    NNCF is installed, its graph competing on OpenVINO (not with ``sensitivity``,
    ``per_channel=False`` or a ``method`` other than ``"minmax"``: options of ONNX Runtime's
    quantizer).

    ``validation``: labelled data, as for ``calibration``; the float32 and int8 top-1 are
    measured on it and the top-1 agreement is checked on all of it (otherwise on the first
    :data:`CHECK_SAMPLES` calibration images). ``sensitivity=True`` (needs labels: the
    validation data's, else the calibration data's) quantizes each layer alone, records what it
    costs, and keeps the costliest in float32 until the int8 top-1 is within ``max_drop``
    points of float32's. With validation labels, a graph and runtime that lose more than
    ``max_drop`` points are passed over for one that does not, if any. ``exclude``: layers
    (module names, as the report shows them) or ONNX node names to keep in float32 from the
    start. ``per_channel=False`` gives every weight
    tensor one scale (what collapsed depthwise networks in published reports; for comparison).

    The check: on each runtime, the int8 model's top-1 answer must equal the float32 model's on
    at least ``min_agreement`` of the check images, else :class:`QuantizationError`. Timings
    (median ms on ``example``, default the first 8 calibration images) are in ``.report``, and so
    is the int8 top-1 on the validation images of the graph and runtime chosen.
    """
    if method not in METHODS:
        raise UsageError(
            f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}"
        )
    if backend not in BACKENDS:
        raise UsageError(f"unknown int8 backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if quantizer not in ("auto", *QUANTIZERS):
        raise UsageError(
            f"unknown quantizer {quantizer!r}; choose one of auto, {', '.join(QUANTIZERS)}"
        )
    if samples < MIN_SAMPLES:
        raise UsageError(
            f"calibration needs at least {MIN_SAMPLES} samples (default {DEFAULT_SAMPLES}), "
            f"got {samples}"
        )
    if not 0 <= max_drop < 100 or not math.isfinite(max_drop):
        raise UsageError(f"max_drop is in accuracy points, in [0, 100), got {max_drop}")
    if not 0 <= min_agreement <= 1:
        raise UsageError(f"min_agreement is a fraction in [0, 1], got {min_agreement}")
    if "onnxruntime" not in installed_runtimes():
        raise CnnzooError("int8 needs onnxruntime: pip install onnxruntime (or cnnzoo[export])")
    runtimes = installed_runtimes() if backend == "auto" else [backend]
    if backend == "openvino" and "openvino" not in installed_runtimes():
        raise CnnzooError("backend 'openvino' needs OpenVINO: pip install openvino")
    if quantizer == "nncf":
        if backend == "onnxruntime":
            raise UsageError("NNCF's int8 graph is made for OpenVINO: use backend openvino or auto")
        if "openvino" not in installed_runtimes() or importlib.util.find_spec("nncf") is None:
            raise CnnzooError(
                "quantizer 'nncf' needs OpenVINO and NNCF: pip install cnnzoo[openvino]"
            )
        if sensitivity or not per_channel or method != "minmax":
            raise UsageError(
                "sensitivity, per-tensor weights and the entropy and percentile methods are "
                "options of ONNX Runtime's quantizer: drop them or use quantizer onnxruntime"
            )
        runtimes = ["openvino"]

    images, labels = _gather(calibration, samples, "calibration")
    if len(images) < MIN_SAMPLES:
        raise UsageError(
            f"the calibration data has {len(images)} images; at least {MIN_SAMPLES} are needed "
            f"({DEFAULT_SAMPLES} by default)"
        )
    val_images, val_labels = (None, None)
    if validation is not None:
        val_images, val_labels = _gather(validation, None, "validation")
        if val_labels is None:
            raise UsageError("validation data needs labels: (images, labels) batches")
        if val_images.shape[1:] != images.shape[1:]:
            raise UsageError(
                f"validation images are {tuple(val_images.shape[1:])}, calibration images "
                f"{tuple(images.shape[1:])}"
            )
    if sensitivity and val_labels is None:
        if labels is None:
            raise UsageError(
                "sensitivity analysis measures accuracy: give labelled validation data or "
                "(images, labels) calibration batches"
            )
        val_images, val_labels = images, labels
    if example is not None and tuple(example.shape[1:]) != tuple(images.shape[1:]):
        raise UsageError(
            f"the example batch is {tuple(example.shape[1:])} per image, the calibration images "
            f"{tuple(images.shape[1:])}"
        )
    scheme = int8_scheme()
    report = QuantizeReport(
        method=method,
        samples=len(images),
        per_channel=per_channel,
        activation_type=scheme.activation_type,
        weight_type=scheme.weight_type,
        reduce_range=scheme.reduce_range,
        cpu=scheme.cpu,
        min_agreement=min_agreement,
        max_drop=max_drop if sensitivity else None,
    )
    bars = _Progress(progress)
    with tempfile.TemporaryDirectory(prefix="cnnzoo-int8-") as tmp:
        folder = Path(tmp)
        module = _export_float(model, images, folder / "fp32.onnx", report)
        graph = _prepare_graph(folder / "fp32.onnx", folder / "prepared.onnx")
        fp32 = OnnxModel(graph.path, name="float32 graph")
        excluded = _nodes_of(graph, exclude)
        report.fp32_layers = [_label(graph, name) for name in exclude]
        build = partial(_quantize_graph, graph, scheme, method, per_channel, folder)
        int8_path = folder / "int8.onnx"
        if quantizer != "nncf":
            with bars.task("calibrating", math.ceil(len(images) / CALIBRATION_BATCH)) as step:
                reader = _reader(images.numpy(), graph.input_name, step)
                build(int8_path, exclude=excluded, reader=reader)
        if val_images is not None and val_labels is not None:
            reference = _logits(fp32, val_images)
            report.validation_samples = len(val_images)
            report.fp32_top1 = _top1(reference, val_labels)
            if sensitivity:
                scored = _logits(OnnxModel(int8_path), val_images)
                report.int8_top1_all = _top1(scored, val_labels)
                int8_path = _keep_costly_layers_in_float(
                    graph, build, report, scored, val_images, val_labels, excluded, max_drop, bars
                )
            check_images = val_images
        else:
            check_images = images[:CHECK_SAMPLES]
            reference = _logits(fp32, check_images)
        graphs = {"onnxruntime": int8_path.read_bytes()} if quantizer != "nncf" else {}
        why_not = _why_not_nncf(runtimes, method, per_channel, sensitivity)
        if quantizer == "onnxruntime":
            why_not = ""
        if why_not is None:
            with bars.task("calibrating (NNCF)", len(images)) as step:
                try:
                    graphs["nncf"] = _nncf_graph(graph, images.numpy(), excluded, step)
                except Exception as exc:  # a graph NNCF cannot take: ONNX Runtime's still can
                    if quantizer == "nncf":
                        raise
                    report.notes.append(f"NNCF not used: {type(exc).__name__}: {_first_line(exc)}")
        elif why_not:
            report.notes.append(why_not)
    report.check_samples = len(check_images)
    timing_input = example if example is not None else images[:8]
    accuracy = (val_labels, max_drop) if val_labels is not None else None
    runner, scored = _choose_runtime(
        graphs, fp32, runtimes, backend, check_images, reference, timing_input, report, accuracy
    )
    onnx_bytes = graphs[report.quantizer]
    report.quantized_nodes = _count_quantized(onnx_bytes)
    if val_labels is not None:
        report.int8_top1 = _top1(scored, val_labels)  # as the chosen graph and runtime answer
    return QuantizedModel(module, runner, onnx_bytes, report)


def _why_not_nncf(
    runtimes: Sequence[str], method: str, per_channel: bool, sensitivity: bool
) -> str | None:
    """None when NNCF should quantize too; else why not ("" when there is nothing to say)."""
    if "openvino" not in runtimes:
        return ""
    if importlib.util.find_spec("nncf") is None:
        return "NNCF not used: it is not installed (pip install nncf, or cnnzoo[openvino])"
    if sensitivity or not per_channel or method != "minmax":
        return ""  # options of ONNX Runtime's quantizer: its graph alone answers them
    return None


def _nncf_graph(graph: _Graph, images: np.ndarray, exclude: Sequence[str], step: Any) -> bytes:
    """NNCF's int8 graph (QDQ) of the prepared float32 graph, calibrated on ``images`` one at a
    time (NNCF's statistics and bias correction assume batches of one)."""
    import onnx

    nncf = _import_nncf()

    def feed(index: int) -> dict[str, np.ndarray]:
        step()
        return {graph.input_name: images[index : index + 1]}

    ignored = nncf.IgnoredScope(names=list(exclude), validate=False) if exclude else None
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with _quiet():
            quantized = nncf.quantize(
                onnx.load(str(graph.path)),
                nncf.Dataset(range(len(images)), feed),
                subset_size=len(images),
                ignored_scope=ignored,
            )
    finally:
        nncf_log.setLevel(level)
    return quantized.SerializeToString()


def _import_nncf() -> Any:
    """NNCF with its usage telemetry off. Without a consent file NNCF reports its calls to
    Google Analytics; a library must not turn that on for its users, so NNCF is imported with
    ``NNCF_CI`` set, its only switch (it changes nothing else). A process that imported NNCF
    itself keeps its own setting."""
    if "nncf" not in sys.modules:
        previous = os.environ.get("NNCF_CI")
        os.environ["NNCF_CI"] = "1"
        try:
            import nncf  # noqa: F401
        finally:
            if previous is None:
                del os.environ["NNCF_CI"]
            else:
                os.environ["NNCF_CI"] = previous
    return sys.modules["nncf"]


def _export_float(
    model: nn.Module | str | Path, images: torch.Tensor, path: Path, report: QuantizeReport
) -> nn.Module | None:
    """The float32 graph quantization starts from: BatchNorms folded, checked against eager."""
    if not isinstance(model, nn.Module):
        source = Path(model)
        from cnnzoo.runtime import read_metadata

        meta = read_metadata(source) or {}
        if meta.get("precision") == "int8":
            raise UsageError(f"{source} is already int8; quantize its float32 source")
        path.write_bytes(source.read_bytes())
        return None
    from cnnzoo.export import export_model

    work = copy.deepcopy(model).eval()
    for parameter in work.parameters():
        parameter.requires_grad_(False)
    report.folded_batchnorms = len(fold_batchnorms(work))
    if hasattr(work, "check_input"):  # an input the network cannot take: its own clear line
        work.check_input(images[:2])
    export_model(work, path, "onnx", images[: max(2, min(8, len(images)))])
    return work


def _quantize_graph(
    graph: _Graph,
    scheme: Int8Scheme,
    method: str,
    per_channel: bool,
    folder: Path,
    out: Path,
    *,
    exclude: Sequence[str] = (),
    only: Sequence[str] | None = None,
    reader: Any = None,
) -> Path:
    """One ONNX Runtime static quantization of the prepared graph. The activation ranges are
    measured once, with ``reader``, and read back from ``folder/ranges.json`` afterwards."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    extra: dict[str, Any] = {}
    if reader is not None and method != "minmax":
        # The histogram calibrators keep every activation of what they are given: one batch
        # at a time bounds the memory (min/max reduce inside the graph and need no such care).
        extra["CalibStridedMinMax"] = 1
    with _quiet():
        quantize_static(
            str(graph.path),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=scheme.reduce_range,
            activation_type=types[scheme.activation_type],
            weight_type=types[scheme.weight_type],
            nodes_to_quantize=list(only) if only is not None else None,
            nodes_to_exclude=list(exclude),
            calibrate_method=calibrate,
            extra_options=extra,
            calibration_cache_path=str(folder / "ranges.json"),
        )
    return out


def _nodes_of(graph: _Graph, names: Sequence[str]) -> list[str]:
    """Node names for layer (module) or node names; an unknown one is a usage error."""
    nodes: list[str] = []
    for name in names:
        if name in graph.layers:
            nodes += graph.layers[name]
        elif name in graph.ops:
            nodes.append(name)
        else:
            known = ", ".join(sorted(n for n in graph.layers if n)[:8])
            raise UsageError(f"no layer named {name!r} to keep in float32 (layers: {known}, ...)")
    return nodes


def _count_quantized(onnx_bytes: bytes) -> int:
    """Compute ops of the int8 graph that read a dequantized weight or activation."""
    import onnx

    graph = onnx.load_model_from_string(onnx_bytes).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(
        1
        for n in graph.node
        if n.op_type in _COMPUTE_OPS and any(i in dequantized for i in n.input)
    )


def _label(graph: _Graph, layer: str) -> str:
    return layer or "(top level)"


def _keep_costly_layers_in_float(
    graph: _Graph,
    build: Callable[..., Path],
    report: QuantizeReport,
    scored: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    excluded: list[str],
    max_drop: float,
    bars: _Progress,
) -> Path:
    """Quantize each layer alone and record its cost; then keep the costliest layers in float32,
    one more at a time, until int8 is within ``max_drop`` points of float32."""
    assert report.fp32_top1 is not None
    folder = graph.path.parent
    chosen = set(excluded)  # layers the caller keeps in float32 are not costed
    layers = [name for name, nodes in graph.layers.items() if nodes and not chosen >= set(nodes)]
    costs: list[LayerCost] = []
    with bars.task("quantizing one layer at a time", len(layers)) as step:
        for layer in layers:
            path = build(folder / "one.onnx", only=graph.layers[layer])
            top1 = _top1(_logits(OnnxModel(path), images), labels)
            ops = [graph.ops[n] for n in graph.layers[layer]]
            costs.append(LayerCost(_label(graph, layer), ops, top1, report.fp32_top1 - top1))
            step()
    order = sorted(range(len(layers)), key=lambda i: costs[i].cost, reverse=True)
    report.sensitivity = [costs[i] for i in order]
    best = graph.path.parent / "int8.onnx"  # every layer int8; ``scored`` are its logits
    kept: list[str] = []
    for index in order:
        if report.fp32_top1 - _top1(scored, labels) <= max_drop:
            break
        # Layers that cost nothing alone still count together (their activations' rounding
        # adds up), so the list is followed to its end if need be.
        kept.append(layers[index])
        nodes = excluded + [n for layer in kept for n in graph.layers[layer]]
        best = build(folder / f"int8-{len(kept)}.onnx", exclude=nodes)
        scored = _logits(OnnxModel(best), images)
    report.fp32_layers += [_label(graph, layer) for layer in kept]
    report.int8_top1 = _top1(scored, labels)
    if report.fp32_top1 - report.int8_top1 > max_drop:
        report.notes.append(
            f"int8 still loses {report.fp32_top1 - report.int8_top1:.2f} points with every "
            f"layer in float32 (max_drop {max_drop})"
        )
    return best


def _candidate(quantizer: str, runtime: str) -> str:
    return runtime if quantizer == "onnxruntime" else f"{runtime} ({quantizer})"


def _choose_runtime(
    graphs: dict[str, bytes],
    fp32: OnnxModel,
    runtimes: list[str],
    backend: str,
    check_images: torch.Tensor,
    reference: torch.Tensor,
    timing_input: torch.Tensor,
    report: QuantizeReport,
    accuracy: tuple[torch.Tensor, float] | None = None,
) -> tuple[OnnxModel, torch.Tensor]:
    """Check each int8 graph on each runtime that may run it (NNCF's on OpenVINO, for which it
    was made), time the pairs that pass, keep the fastest: (its runner, its logits on the check
    images). With ``accuracy`` (the check images' labels, max_drop), pairs that lose more than
    max_drop top-1 points against float32 are passed over when another one does not. ``report``
    records the choice."""
    checked: dict[str, tuple[OnnxModel, torch.Tensor, tuple[float, float, float]]] = {}
    pairs = {
        _candidate(quantizer, runtime): (quantizer, runtime)
        for quantizer in graphs
        for runtime in runtimes
        if quantizer == "onnxruntime" or runtime == "openvino"
    }
    for label, (quantizer, runtime) in pairs.items():
        try:
            runner = OnnxModel(
                graphs[quantizer], runtime, name=f"int8 graph ({label})", exact_float=False
            )
            logits = _logits(runner, check_images)
            checked[label] = runner, logits, _agreement(logits, reference)
        except Exception as exc:  # a runtime that cannot run this graph: the next one may
            if backend != "auto" and quantizer == "onnxruntime":
                raise
            report.notes.append(f"{label} not used: {type(exc).__name__}: {_first_line(exc)}")
    passed = {label for label, (_, _, (agree, _, _)) in checked.items()
              if agree >= report.min_agreement}  # fmt: skip
    if accuracy is not None and len(passed) > 1:
        labels, max_drop = accuracy
        assert report.fp32_top1 is not None  # measured on the same labelled check images
        drops = {label: report.fp32_top1 - _top1(checked[label][1], labels) for label in passed}
        within = {label for label in passed if drops[label] <= max_drop}
        for label in sorted(passed - within if within else set()):
            report.notes.append(
                f"{label} not used: it loses {drops[label]:.2f} top-1 points on "
                f"{len(labels)} images (max_drop {max_drop:g})"
            )
        passed = within or passed
    for label, (_, _, (agree, _, _)) in checked.items():
        if label not in passed and agree < report.min_agreement:
            message = (
                f"int8 on {label} gives the float32 model's top-1 answer for only "
                f"{100 * agree:.1f}% of {len(check_images)} images (required "
                f"{100 * report.min_agreement:.0f}%)"
            )
            if not passed:
                raise QuantizationError(
                    f"{message}; try sensitivity analysis (--sensitivity), another calibration "
                    "method or more calibration images"
                )
            report.notes.append(f"{label} not used: {message}")
    if not passed:
        raise QuantizationError("no runtime could run the int8 model: " + "; ".join(report.notes))
    x = timing_input.detach().to("cpu", torch.float32)
    report.timing_shape = tuple(x.shape)
    with torch.inference_mode():
        medians = interleaved_medians(
            {"fp32 onnxruntime": partial(fp32, x)}
            | {f"int8 {label}": partial(checked[label][0], x) for label in passed},
            warmup=1,
            rounds=9,
            budget_s=4.0,
            # The int8 candidates differ by a few per cent, and at batch 1 a call lasts 2-5 ms:
            # timed one call at a time, each call pays for the caches the one before left cold.
            min_turn_s=0.1,
        )
    report.timings_ms = {key: seconds * 1e3 for key, seconds in medians.items()}
    best = min(passed, key=lambda label: medians[f"int8 {label}"])
    report.quantizer, report.backend = pairs[best]
    runner, logits, (report.agreement, report.max_abs_diff, report.output_scale) = checked[best]
    for label in passed:
        if label != best:
            report.notes.append(
                f"{label} not used: {report.timings_ms[f'int8 {label}']:.2f} ms vs "
                f"{report.timings_ms[f'int8 {best}']:.2f} ms {best}"
            )
    return runner, logits
