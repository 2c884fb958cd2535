"""Export a model to ONNX, TorchScript or a torch.export ExportedProgram, and check the file.

Every export is loaded back from disk and run on the example batch; the largest absolute
difference from the eager model is reported, and a file whose outputs differ by more than the
tolerance (relative to the eager output's scale) is an error. The batch dimension is exported as
dynamic where the format allows it, so the file takes any batch size.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnzoo.errors import CnnzooError, UsageError

__all__ = ["FORMATS", "ExportResult", "export_model", "missing_onnx_packages"]

FORMATS = ("onnx", "torchscript", "exported-program")
DEFAULT_TOLERANCE = 1e-4  # float32: max |file - eager| / max |eager|
MAX_BATCH = 4096  # upper bound of the dynamic batch dimension


@dataclass
class ExportResult:
    path: Path
    format: str
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    checked_with: str | None  # what ran the reloaded file; None when nothing could
    max_abs_diff: float | None
    output_scale: float | None

    def summary(self) -> str:
        size_mb = self.path.stat().st_size / 2**20
        batch = "dynamic batch" if self.dynamic_batch else "fixed batch"
        head = f"wrote {self.path} ({self.format}, {size_mb:.1f} MiB, {batch})"
        if self.checked_with is None or self.max_abs_diff is None:
            return f"{head}; outputs not compared (pip install onnxruntime to check them)"
        shape = "x".join(map(str, self.input_shape))
        return (
            f"{head}; reloaded with {self.checked_with}: max |exported - eager| = "
            f"{self.max_abs_diff:.3g} on a {shape} input (output scale {self.output_scale:.3g})"
        )


def missing_onnx_packages() -> list[str]:
    """The packages torch's ONNX exporter needs that are not installed."""
    return [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # Exporters print progress to stdout and warn about deprecations and tracer details that
    # say nothing about this model; the round-trip check is what tells whether the file is right.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise CnnzooError(f"the model returned a {type(output).__name__}, not a tensor")


def export_model(
    model: nn.Module,
    path: str | Path,
    format: str,
    example_input: torch.Tensor,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
    protect: Sequence[str | Path] = (),
    metadata: dict[str, Any] | None = None,
) -> ExportResult:
    """Write ``model`` (in eval mode) to ``path`` as ``format``, reload it and compare outputs.

    ``example_input`` should have a batch of at least 2: torch.export specialises a batch of 1,
    so the dynamic batch dimension needs 2 or more. Raises :class:`CnnzooError` when an export
    fails or the reloaded file's outputs differ from eager by more than ``tolerance`` times the
    largest absolute eager output; ``path`` is then left as it was. An existing ``path`` is only
    replaced with ``overwrite``, and never when it is one of ``protect`` (the model's source).
    ``metadata`` (ONNX only) is stored in the file for ``cnnzoo.inference.load_model`` to read.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    check_output_path(path, overwrite=overwrite, protect=protect)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and moved into place only once its outputs check out, so
    # a failed or mismatching export never replaces an existing file.
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        result = _export_checked(model, tmp, format, example_input, tolerance, shown=path)
        if metadata is not None and format == "onnx":
            import onnx

            from cnnzoo.runtime import write_onnx

            write_onnx(onnx.load(str(tmp)), tmp, metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    result.path = path
    return result


def check_output_path(
    path: Path, *, overwrite: bool = False, protect: Sequence[str | Path] = ()
) -> None:
    """Refuse to write over a file in ``protect`` (the model's own source) ever, and over any
    existing file unless ``overwrite``."""
    for source in protect:
        source = Path(source).expanduser()
        if source.exists() and path.exists() and os.path.samefile(source, path):
            raise UsageError(
                f"{path} is one of the files the model comes from; write the export elsewhere"
            )
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists; pass --force to replace it")


def _export_checked(
    model: nn.Module,
    path: Path,
    format: str,
    example_input: torch.Tensor,
    tolerance: float,
    shown: Path,
) -> ExportResult:
    model = model.eval()
    example = example_input.detach()
    with torch.no_grad():
        expected = _first_tensor(model(example))
    dynamic = example.shape[0] >= 2

    if format == "onnx":
        missing = missing_onnx_packages()
        if missing:
            raise CnnzooError(
                f"ONNX export needs {' and '.join(missing)}: pip install {' '.join(missing)}"
            )
        got, checker = _export_onnx(model, example, path, dynamic)
    elif format == "torchscript":
        got, checker = _export_torchscript(model, example, path)
    else:
        got, checker = _export_program(model, example, path, dynamic)

    result = ExportResult(path, format, tuple(example.shape), dynamic, checker, None, None)
    if got is None:
        return result
    if got.shape != expected.shape:
        raise CnnzooError(
            f"{shown}: the reloaded {format} model returns shape {tuple(got.shape)}, "
            f"eager {tuple(expected.shape)}"
        )
    got, expected = got.detach().cpu().double(), expected.cpu().double()
    result.max_abs_diff = (got - expected).abs().max().item()
    result.output_scale = expected.abs().max().item()
    if not result.max_abs_diff <= tolerance * (result.output_scale or 1.0):
        raise CnnzooError(
            f"{shown}: the exported model's outputs differ from eager by "
            f"{result.max_abs_diff:.3g} (allowed {tolerance:g} x output scale "
            f"{result.output_scale:.3g}); nothing was written"
        )
    return result


def _batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}


def _export_program(
    model: nn.Module, example: torch.Tensor, path: Path, dynamic: bool
) -> tuple[torch.Tensor, str]:
    try:
        with _quiet():
            program = torch.export.export(
                model, (example,), dynamic_shapes=(_batch_dim(),) if dynamic else None
            )
            torch.export.save(program, str(path))
    except Exception as exc:
        raise CnnzooError(f"torch.export could not export the model: {_one_line(exc)}") from exc
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        return _first_tensor(loaded(example)), "torch.export.load"


def _export_torchscript(
    model: nn.Module, example: torch.Tensor, path: Path
) -> tuple[torch.Tensor, str]:
    # Tracing rather than scripting: it handles any model whose forward is plain tensor code,
    # which scripting's type rules do not. Shape checks in forward run once, at trace time.
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
            traced.save(str(path))
    except Exception as exc:
        raise CnnzooError(f"torch.jit.trace could not trace the model: {_one_line(exc)}") from exc
    with _quiet():
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return _first_tensor(loaded(example)), "torch.jit.load"


def _export_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, dynamic: bool
) -> tuple[torch.Tensor | None, str | None]:
    try:
        with _quiet():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                external_data=False,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=(_batch_dim(),) if dynamic else None,
            )
    except Exception as exc:
        raise CnnzooError(f"torch.onnx.export failed: {_one_line(exc)}") from exc
    import onnx

    onnx.checker.check_model(str(path))
    if importlib.util.find_spec("onnxruntime") is None:
        return None, None
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: example.cpu().numpy()}
    return torch.from_numpy(session.run(None, feed)[0]), f"onnxruntime {ort.__version__}"


def _one_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
