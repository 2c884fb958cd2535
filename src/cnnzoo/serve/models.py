"""The models one server serves: how a SOURCE on the command line becomes a named model, what
``/v1/models`` says about each, and the collection the app (and anything added to it, such as
the explorer) reaches through ``app.state.models``."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnzoo.errors import CnnzooError, UsageError
from cnnzoo.inference import InferenceModel
from cnnzoo.serve.errors import ApiError
from cnnzoo.serve.worker import TORCH_THREAD, ModelWorker

__all__ = ["ModelSource", "ServedModel", "ServedModels", "parse_source"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


@dataclass
class ModelSource:
    """One model to serve: what to load, and the name it is served under (None: its own).
    ``options``: what an ``.onnx`` file cnnzoo did not write cannot say about itself
    (``classes``, ``input_size``, ``mean``, ``std``: :func:`~cnnzoo.inference.load_model`'s)."""

    source: str | Path | InferenceModel
    weights: str | None = None
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if isinstance(self.source, InferenceModel):
            return self.source.description
        return f"{self.source}:{self.weights}" if self.weights else str(self.source)


def parse_source(text: str | Path | InferenceModel, weights: str | None = None) -> ModelSource:
    """``[NAME=]SOURCE``, where SOURCE is a run directory, a checkpoint file, ``MODEL:WEIGHTS``
    or a model name (with ``weights``)."""
    if isinstance(text, InferenceModel):
        return ModelSource(text, None, None)
    text = str(text)
    name = None
    head, sep, rest = text.partition("=")
    if sep and NAME_PATTERN.fullmatch(head) and not Path(text).expanduser().exists():
        name, text = head, rest
    if weights is None and ":" in text and not Path(text).expanduser().exists():
        from cnnzoo.pretrained import looks_like_path
        from cnnzoo.registry import list_models, unknown_model_message

        model, _, named = text.partition(":")
        if not looks_like_path(model):
            if model not in list_models():
                raise UsageError(unknown_model_message(model))
            if not named:
                raise UsageError(f"{text}: give the weights after the colon, e.g. lenet5:digits")
            text, weights = model, named
    if name is not None and not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"{name!r} cannot name a served model: use letters, digits, _ . -")
    return ModelSource(text, weights, name)


def _load(spec: ModelSource) -> InferenceModel:
    from cnnzoo.inference import load_model

    if isinstance(spec.source, InferenceModel):
        return spec.source
    loaded = load_model(spec.source, spec.weights, **spec.options)
    if not loaded.trained:
        raise UsageError(
            f"{spec.source} has no weights to serve: MODEL:WEIGHTS or --weights "
            f"(`cnnzoo weights {spec.source}` lists them)"
        )
    return loaded


def _default_name(loaded: InferenceModel) -> str:
    if loaded.is_graph:  # r20.int8.onnx is "r20.int8": its model's name may be served beside it
        name = loaded.files[0].name.removesuffix(loaded.files[0].suffix)
    else:
        name = loaded.run_dir.name if loaded.run_dir is not None else loaded.name
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"{name!r} cannot name a served model: choose one with NAME=SOURCE")
    return name


@dataclass
class ServedModel:
    """A served model: its :class:`InferenceModel`, its worker, and what the API says of it."""

    name: str
    loaded: InferenceModel
    worker: ModelWorker
    source: str
    parameters: int
    macs: int | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.worker.ready.is_set() and self.worker.error is None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.loaded.channels, *self.loaded.input_size)

    @property
    def graph(self) -> bool:
        """Served from an ONNX graph: predictions only (no gradients, no layers to show)."""
        return self.loaded.is_graph

    def float32_source(self) -> str | None:
        """For an ONNX graph cnnzoo wrote: the source it was made from, as serve takes it."""
        origin = self.loaded.config.get("origin") or {}
        source, weights = origin.get("source"), origin.get("weights")
        if not source:
            return None
        return f"{source}:{weights}" if weights else str(source)

    def require_module(self, what: str) -> None:
        """A 409 for work that needs the PyTorch model (``what``) when this is an ONNX graph."""
        if not self.graph:
            return
        source = self.float32_source()
        instead = (
            f"serve its float32 source instead: cnnzoo serve {self.name}={source}"
            + (" --int8 (explain keeps float32, predictions are int8)"
               if self.worker.precision == "int8" else "")
            if source
            else "serve the PyTorch model it was exported from (a run, a checkpoint or "
            "MODEL:WEIGHTS) instead"
        )  # fmt: skip
        raise ApiError(
            409,
            f"{self.name} is served from an ONNX graph ({self.loaded.files[0].name}), which has "
            f"no PyTorch model for {what}; {instead}",
        )

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on this model's worker thread, serialised with its inference batches."""
        return await self.worker.call(fn, *args, **kwargs)

    def info(self) -> dict[str, Any]:
        loaded = self.loaded
        weights = loaded.weights or (loaded.files[0].name if loaded.files else None)
        report = self.worker.optimize_report
        info = {
            "name": self.name,
            "model": loaded.name,
            "classes": list(loaded.class_names),
            "num_classes": loaded.num_classes,
            "input_size": list(loaded.input_size),
            "channels": loaded.channels,
            "weights": weights,
            "description": loaded.description,
            "source": self.source,
            "parameters": self.parameters,
            "macs": self.macs,
            "mean": list(loaded.mean),
            "std": list(loaded.std),
            "ready": self.ready,
            "optimized": str(report).splitlines()[0] if report is not None else None,
            "precision": self.worker.precision,
            "runtime": self.worker.runtime,
            # An ONNX graph answers predict and /v2 infer; explain and layers need PyTorch.
            "graph": self.graph,
            "explain": not self.graph,
            "int8": self.int8_facts(),
        }
        if self.graph:
            info["float32_source"] = self.float32_source()
        return {**info, **self.extra}

    def int8_facts(self) -> dict[str, Any] | None:
        """How the int8 model compares with float32: measured at start-up (``int8``), or as
        recorded in an int8 file when it was quantized."""
        from cnnzoo.quantize import QuantizeReport

        report = self.worker.optimize_report
        if isinstance(report, QuantizeReport):
            return {
                "quantized": "at start-up",
                "calibration": f"{report.method} on {report.samples} images",
                "agreement": report.agreement,
                "check_images": report.check_samples,
                "fp32_top1": report.fp32_top1,
                "int8_top1": report.int8_top1,
                "validation_images": report.validation_samples,
                "speedup": report.speedup,
            }
        if self.worker.precision != "int8" or not self.graph:
            return None
        meta = self.loaded.config.get("onnx") or {}
        recorded = meta.get("quantization") or {}
        return {
            "quantized": "in the file",
            "calibration": meta.get("calibration"),
            "agreement": recorded.get("agreement"),
            "check_images": recorded.get("check_samples"),
            "fp32_top1": recorded.get("fp32_top1"),
            "int8_top1": recorded.get("int8_top1"),
            "validation_images": recorded.get("validation_samples"),
            "test": meta.get("accuracy"),  # both scored on the test split, when it was made
        }

    def ready_note(self) -> str | None:
        """What warming up made of the model, for the line that says the server is ready."""
        from cnnzoo.quantize import QuantizeReport

        report = self.worker.optimize_report
        if report is None:
            return None
        if not isinstance(report, QuantizeReport):
            return f"{self.name} {str(report).splitlines()[0]}"
        line = (
            f"{self.name} int8 on {report.backend}: top-1 agreement with float32 "
            f"{100 * report.agreement:.2f}% on {report.check_samples} images"
        )
        if report.fp32_top1 is not None and report.int8_top1 is not None:
            line += (
                f", top-1 float32 {report.fp32_top1:.2f}% int8 {report.int8_top1:.2f}% "
                f"({report.int8_top1 - report.fp32_top1:+.2f} points) on "
                f"{report.validation_samples} validation images"
            )
        if report.speedup:
            line += f", {report.speedup:.2f}x float32"
        return line

    def startup_line(self) -> str:
        names = self.loaded.class_names
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        c, h, w = self.input_shape
        line = (
            f"{self.name}: {len(names)} classes ({shown}), input {c}x{h}x{w}, "
            f"from {self.loaded.description}"
        )
        worker = self.worker
        if self.graph:
            line += f"; {worker.precision} on {worker.runtime}"
            if worker.optimize_requested and worker.int8 is None:
                line += " (--optimize leaves a graph as it is)"
        calibration = worker.calibration
        if worker.int8 is not None and calibration is not None:
            line += f"; int8 once calibrated on {calibration.description}"
        return line


def _graph_parameters(path: Path) -> int:
    """The weights of an ONNX graph: its float initializers and what DequantizeLinear turns
    into floats (int8 weights, int32 biases), not the scales and zero points."""
    import math

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
              onnx.TensorProto.DOUBLE}  # fmt: skip
    quantized, qparams = set(), set()
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            qparams.update(node.input[1:])
            if node.op_type == "DequantizeLinear":
                quantized.add(node.input[0])
    return sum(
        math.prod(t.dims)
        for t in graph.initializer
        if t.name not in qparams and (t.data_type in floats or t.name in quantized)
    )


def _parameters_and_macs(loaded: InferenceModel) -> tuple[int, int | None]:
    from cnnzoo.analysis.flops import count_macs

    if loaded.is_graph:  # the flop counter sees torch operations, and a graph runs none
        return _graph_parameters(loaded.files[0]), None
    parameters = sum(p.numel() for p in loaded.model.parameters())
    try:
        macs = count_macs(loaded.model, (loaded.channels, *loaded.input_size))
    except Exception:  # noqa: BLE001 - a count the flop counter cannot make is shown as null
        macs = None
    return parameters, macs


class ServedModels:
    """The collection on ``app.state.models``: look up by name (``models["lenet5"]`` or
    :meth:`get`, a 404 listing the served ones), iterate, :meth:`call` a function on a model's
    thread, and :meth:`add` another model while the server runs."""

    def __init__(
        self,
        worker_options: dict[str, Any],
        metrics: Any = None,
        calibration: dict[str, Any] | None = None,
    ) -> None:
        self._models: dict[str, ServedModel] = {}
        self._reserved: set[str] = set()
        self._lock = threading.Lock()
        self.worker_options = worker_options
        # With int8: cnnzoo.calibration.calibration_data's spec, samples, validation_samples.
        self.calibration = calibration or {}
        self.metrics = metrics
        self.started = False

    # ---------------------------------------------------------------- lookup

    def __getitem__(self, name: str) -> ServedModel:
        return self._models[name]

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(list(self._models.values()))

    def __len__(self) -> int:
        return len(self._models)

    def names(self) -> list[str]:
        return list(self._models)

    def list(self) -> list[ServedModel]:
        return list(self._models.values())

    def get(self, name: str) -> ServedModel:
        """The model served as ``name``, or a 404 that lists the served ones."""
        served = self._models.get(name)
        if served is None:
            raise ApiError(404, f"no model {name!r} here; served: {', '.join(self._models)}")
        if not self.started:
            self.start()
        return served

    async def call(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the worker thread of the model served as ``name``."""
        return await self.get(name).call(fn, *args, **kwargs)

    # ---------------------------------------------------------------- lifecycle

    @property
    def ready(self) -> bool:
        return all(served.ready for served in self)

    def not_ready(self) -> list[str]:
        return [served.name for served in self if not served.ready]

    def start(self) -> None:
        """Start every worker (they warm up in the background; :attr:`ready` says when done)."""
        self.started = True
        for served in self:
            served.worker.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        self.start()
        return all(served.worker.ready.wait(timeout) for served in self)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued work and end the workers."""
        for served in self:
            served.worker.stop(timeout)

    # ---------------------------------------------------------------- loading

    def _reserve(self, name: str) -> None:
        with self._lock:
            if name in self._models or name in self._reserved:
                raise UsageError(f"two models would be served as {name!r}; name them: NAME=SOURCE")
            self._reserved.add(name)

    def _build(self, spec: ModelSource, loaded: InferenceModel) -> ServedModel:
        name = spec.name or _default_name(loaded)
        self._reserve(name)
        try:
            parameters, macs = _parameters_and_macs(loaded)
            worker = ModelWorker(
                name,
                loaded,
                metrics=self.metrics,
                calibration=self._calibration(loaded),
                **self.worker_options,
            )
            if self.metrics is not None:
                self.metrics.watch_queue(name, lambda: worker.depth)
            return ServedModel(name, loaded, worker, str(spec), parameters, macs)
        except BaseException:
            self._reserved.discard(name)
            raise

    def _calibration(self, loaded: InferenceModel) -> Any:
        """With int8, the images a float32 source is calibrated and checked on, found now so
        that a source without any is refused before the server starts (one line)."""
        if self.worker_options.get("int8") is None or loaded.config.get("precision") == "int8":
            return None
        from cnnzoo.calibration import calibration_data

        options = self.calibration
        data = calibration_data(
            loaded,
            options.get("spec"),
            samples=options.get("samples", self.worker_options["int8"]["samples"]),
            validation_samples=options.get("validation_samples", 0),
        )
        if self.worker_options["int8"].get("sensitivity") and data.labels is None:
            raise UsageError(
                f"--sensitivity measures accuracy on labelled images of {loaded.description}'s "
                f"own dataset; {data.spec} gives none (calibrate on the source's dataset)"
            )
        return data

    def _register(self, served: ServedModel) -> None:
        with self._lock:
            self._reserved.discard(served.name)
            self._models[served.name] = served

    def load(self, source: str | Path | InferenceModel | ModelSource) -> ServedModel:
        """Load a source now (the worker starts with the others); errors are one line."""
        spec = source if isinstance(source, ModelSource) else parse_source(source)
        # Loading runs torch (weights copied, MACs counted): on the torch thread, so that this
        # thread never gets an OpenMP team of its own (see cnnzoo.serve.worker).
        served = TORCH_THREAD.run(lambda: self._build(spec, _load(spec)))
        self._register(served)
        if self.started:
            served.worker.start()
        return served

    async def add(
        self, source: str | Path | InferenceModel, name: str | None = None
    ) -> ServedModel:
        """Load another model while the server runs: it warms up like the others, then appears
        in ``/v1/models``. A bad source is a 400, a name already served a 409."""
        try:
            spec = parse_source(source) if not isinstance(source, ModelSource) else source
        except UsageError as exc:
            raise ApiError(400, str(exc)) from None
        if name is not None:
            if not NAME_PATTERN.fullmatch(name):
                raise ApiError(400, f"{name!r} cannot name a served model: letters, digits, _ . -")
            spec.name = name
        if spec.name is not None and spec.name in self._models:
            raise ApiError(409, f"a model is already served as {spec.name!r}")
        loop = asyncio.get_running_loop()

        try:  # building a model runs torch: on the torch thread, between batches
            served = await asyncio.wrap_future(
                TORCH_THREAD.submit(lambda: self._build(spec, _load(spec)))
            )
        except UsageError as exc:
            status = 409 if "would be served as" in str(exc) else 400
            raise ApiError(status, str(exc)) from None
        except CnnzooError as exc:
            raise ApiError(400, str(exc)) from None
        served.worker.start()
        await loop.run_in_executor(None, served.worker.ready.wait)
        if served.worker.error is not None:
            self._reserved.discard(served.name)
            raise ApiError(500, f"{served.name} failed to warm up: {served.worker.error}")
        self._register(served)
        return served
