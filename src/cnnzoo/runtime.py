"""ONNX files at inference time: a graph run by ONNX Runtime or OpenVINO behind a torch module,
and the metadata cnnzoo writes into the ONNX files it makes.

:class:`OnnxModel` is what ``cnnzoo.inference.load_model`` returns as the network of a ``.onnx``
source, what :func:`cnnzoo.quantize` runs its int8 graph with, and what ``optimize`` builds its
ONNX Runtime and OpenVINO candidates from: ``model(x)`` takes a float tensor (N, C, H, W) and
returns the logits as a tensor on ``x``'s device. OpenVINO is optional (``pip install
cnnzoo[openvino]``); ONNX Runtime comes with the ``export`` extra.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnzoo.errors import CnnzooError, UsageError

__all__ = [
    "METADATA_KEY",
    "RUNTIMES",
    "OnnxModel",
    "installed_runtimes",
    "onnxruntime_session",
    "read_metadata",
    "write_onnx",
]

RUNTIMES = ("onnxruntime", "openvino")
METADATA_KEY = "cnnzoo"  # one metadata_props entry, a JSON object (see inference.onnx_metadata)
_MAX_OPENVINO_SHAPES = 8  # compiled batch sizes kept per OpenVINO model


def installed_runtimes() -> list[str]:
    """The runtimes of :data:`RUNTIMES` that can be imported here and that ``$CNNZOO_RUNTIMES``
    (a comma-separated list, e.g. ``onnxruntime``) allows, when it is set.

    Restricting them keeps OpenVINO out of a process that forks afterwards (DataLoader workers,
    subprocesses): its thread pool does not survive fork, and processes that had used it crashed.
    """
    allowed = os.environ.get("CNNZOO_RUNTIMES")
    names = RUNTIMES if not allowed else [n.strip() for n in allowed.split(",")]
    return [n for n in RUNTIMES if n in names and importlib.util.find_spec(n) is not None]


def _missing_runtime(name: str) -> CnnzooError:
    extra = "export" if name == "onnxruntime" else "openvino"
    return CnnzooError(f"{name} is not installed: pip install {name} (or cnnzoo[{extra}])")


def onnxruntime_session(model: bytes | str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session that uses ``threads`` (default: torch's) and does not spin.

    ONNX Runtime's workers busy-wait after each run by default, taking the cores from whatever
    PyTorch (or another request) runs next; a library call must not slow its caller's other work.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise _missing_runtime("onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxModel(nn.Module):
    """An ONNX graph as an inference-only module: ``model(x)`` returns its first output.

    ``runtime`` is ``"onnxruntime"`` or ``"openvino"``. OpenVINO is told to keep float32 as
    float32 (on CPUs with bf16 units it would otherwise compute float graphs in bf16), unless
    ``exact_float=False``: an int8 (QDQ) graph, whose answers already differ slightly from
    float32's, then runs its remaining float ops at OpenVINO's own choice of precision, as
    OpenVINO's int8 models do (bf16 on CPUs with AMX). OpenVINO compiles one static shape per
    batch size it sees.
    """

    def __init__(
        self,
        model: bytes | str | Path,
        runtime: str = "onnxruntime",
        *,
        threads: int | None = None,
        name: str = "",
        exact_float: bool = True,
    ) -> None:
        super().__init__()
        if runtime not in RUNTIMES:
            raise UsageError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        self.runtime = runtime
        self.name = name or (str(model) if isinstance(model, (str, Path)) else "ONNX graph")
        self.threads = threads or torch.get_num_threads()
        self.exact_float = exact_float
        import onnx

        proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else None
        if proto is None:
            try:
                proto = onnx.load(str(model), load_external_data=False)
            except Exception as exc:
                raise CnnzooError(
                    f"{model}: not a readable ONNX file ({_first_line(exc)})"
                ) from exc
        graph_input = proto.graph.input[0]
        self.input_name = graph_input.name
        dims = graph_input.type.tensor_type.shape.dim
        # None where the file leaves a dimension open (the batch, usually).
        self.input_shape: tuple[int | None, ...] = tuple(
            d.dim_value if d.HasField("dim_value") else None for d in dims
        )
        self._lock = threading.Lock()
        self._checked_shape: tuple[int, ...] | None = None
        if runtime == "onnxruntime":
            self._session = onnxruntime_session(model, self.threads)
        else:
            self._ov_model, self._core, self._ov_tensor = self._read_openvino(proto)
            self._requests: dict[tuple[int, ...], Any] = {}

    @staticmethod
    def _read_openvino(proto: Any) -> tuple[Any, Any, Any]:
        """(the model read from ``proto``, the ``ov.Core`` that read it, ``ov.Tensor``)."""
        try:
            import openvino as ov
        except ImportError:
            raise _missing_runtime("openvino") from None
        core = ov.Core()
        # OpenVINO reads ONNX from a file; the graph is in memory once read.
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            Path(path).write_bytes(proto.SerializeToString())
            return core.read_model(path), core, ov.Tensor

    def _openvino_for(self, shape: tuple[int, ...]) -> Any:
        """The infer request of the model compiled for ``shape`` (compiled at first sight)."""
        request = self._requests.get(shape)
        if request is None:
            if len(self._requests) >= _MAX_OPENVINO_SHAPES:
                self._requests.pop(next(iter(self._requests)))
            model = self._ov_model.clone()
            model.reshape({model.inputs[0].any_name: list(shape)})
            config: dict[str, Any] = {
                "INFERENCE_NUM_THREADS": self.threads,
                "PERFORMANCE_HINT": "LATENCY",
            }
            if self.exact_float:
                config["INFERENCE_PRECISION_HINT"] = "f32"
            request = self._core.compile_model(model, "CPU", config).create_infer_request()
            self._requests[shape] = request
        return request

    def check_input(self, x: torch.Tensor) -> None:
        """One clear line for an input the graph cannot take."""
        want = self.input_shape
        got = tuple(x.shape)
        if len(got) != len(want) or any(
            w is not None and w != g for w, g in zip(want, got, strict=True)
        ):
            shown = "x".join("N" if w is None else str(w) for w in want)
            raise UsageError(
                f"{self.name} takes inputs of shape {shown}, got {'x'.join(map(str, got))}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # At batch 1 an int8 graph runs in 2 ms: the checks and copies around it are kept short.
        shape = tuple(x.shape)
        if shape != self._checked_shape:
            self.check_input(x)
            self._checked_shape = shape
        ready = x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous()
        if ready and not x.requires_grad:
            array = x.numpy()
        else:
            array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.runtime == "onnxruntime":
            out = self._session.run(None, {self.input_name: array})[0]
        else:
            with self._lock:  # one infer request serves one call at a time
                request = self._openvino_for(shape)
                # Setting a tensor over the array's memory, then a bare infer(), is the call's
                # quickest form: infer({0: array}) copies the input, and even with
                # share_inputs=True it costs 3 % of a 2 ms batch more (measured on resnet18).
                request.set_input_tensor(self._ov_tensor(array, shared_memory=True))
                request.infer()
                out = request.get_output_tensor(0).data.copy()
        result = torch.from_numpy(out)
        return result if x.device.type == "cpu" else result.to(x.device)

    def extra_repr(self) -> str:
        return f"{self.name!r}, runtime={self.runtime}"


# --- metadata ---------------------------------------------------------------------------------


def read_metadata(path: str | Path) -> dict[str, Any] | None:
    """The cnnzoo metadata of an ONNX file, or None for a file cnnzoo did not write."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise CnnzooError(f"{path}: not a readable ONNX file ({_first_line(exc)})") from exc
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                data = json.loads(prop.value)
            except json.JSONDecodeError:
                raise CnnzooError(f"{path}: its cnnzoo metadata is damaged") from None
            return data if isinstance(data, dict) else None
    return None


def write_onnx(model: Any, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write an ``onnx.ModelProto`` (or its bytes) to ``path`` with ``metadata``, atomically: a
    temporary file in the same folder is renamed into place only once it is complete."""
    import onnx

    proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else model
    if metadata is not None:
        kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata, sort_keys=True))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(proto.SerializeToString())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
