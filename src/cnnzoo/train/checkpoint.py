"""Crash-safe checkpoints: a ``TAG.safetensors`` (weights) + ``TAG.state.pt`` (everything else).

Every file is written to a temporary name in the same directory, flushed and fsynced, then moved
into place with ``os.replace`` and the directory fsynced, so a crash or ``kill -9`` at any moment
leaves either the old or the new file, never a torn one. A pair must also stay consistent: both
files carry the same random ``token`` (and the epoch). The weights are replaced first, the state
last, and the weights being replaced are kept as a hard link ``TAG.safetensors.prev`` until the
state is in place, so a crash between the two renames still finds the old pair on load.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from cnnzoo.errors import WeightsError

__all__ = [
    "Checkpoint",
    "atomic_write_bytes",
    "checkpoint_exists",
    "defer_sigint",
    "load_checkpoint",
    "save_checkpoint",
    "weights_bytes",
]

TMP_MARK = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(path: Path) -> Path:
    # A leading dot and the marker keep a leftover temp file from ever matching a real name.
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _write_temp(path: Path, data: bytes) -> Path:
    tmp = _temp_path(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` so that readers see the old or the new content, nothing else."""
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temps(directory: Path) -> None:
    """Delete temp files a killed writer left behind (never the real checkpoints)."""
    for leftover in directory.glob(f".*{TMP_MARK}*"):
        leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def defer_sigint() -> Iterator[None]:
    """Hold back Ctrl-C while a checkpoint is written; it is raised right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[bool] = []
    previous = signal.signal(signal.SIGINT, lambda *_: pending.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            raise KeyboardInterrupt


def weights_bytes(weights: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    # safetensors wants contiguous tensors without shared storage; a CPU copy gives both.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}
    return safetensors_bytes(tensors, metadata=dict(metadata))


def _state_bytes(state: Mapping[str, Any]) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def save_checkpoint(
    run_dir: str | Path,
    tag: str,
    weights: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``TAG.safetensors`` and ``TAG.state.pt`` as one consistent, crash-safe pair.

    ``state`` must hold only tensors and plain Python values (it is read back with
    ``torch.load(weights_only=True)``) and an integer ``"epoch"``.
    """
    run_dir = Path(run_dir)
    weights_path = run_dir / f"{tag}.safetensors"
    state_path = run_dir / f"{tag}.state.pt"
    backup = run_dir / f"{tag}.safetensors.prev"
    token = uuid.uuid4().hex
    epoch = int(state["epoch"])
    meta = {**(metadata or {}), "format": "pt", "epoch": str(epoch), "token": token}
    weights_tmp = _write_temp(weights_path, weights_bytes(weights, meta))
    try:
        state_tmp = _write_temp(state_path, _state_bytes({**state, "token": token}))
    except BaseException:
        weights_tmp.unlink(missing_ok=True)
        raise
    try:
        backup.unlink(missing_ok=True)
        if weights_path.exists():
            os.link(weights_path, backup)
        os.replace(weights_tmp, weights_path)
        os.replace(state_tmp, state_path)
        _fsync_dir(run_dir)
    except BaseException:
        weights_tmp.unlink(missing_ok=True)
        state_tmp.unlink(missing_ok=True)
        raise
    backup.unlink(missing_ok=True)


def _weights_token(path: Path) -> tuple[str | None, int | None]:
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    epoch = meta.get("epoch")
    return meta.get("token"), int(epoch) if epoch is not None else None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        return {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118


class Checkpoint:
    """A loaded pair: ``weights`` (state dict) and ``state`` (optimizer, RNG, history, ...)."""

    def __init__(self, weights: dict[str, torch.Tensor], state: dict[str, Any], path: Path):
        self.weights = weights
        self.state = state
        self.path = path

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])


def checkpoint_exists(run_dir: str | Path, tag: str) -> bool:
    return (Path(run_dir) / f"{tag}.state.pt").is_file()


def load_checkpoint(run_dir: str | Path, tag: str) -> Checkpoint:
    """Load the pair ``tag`` from ``run_dir``, checking that weights and state belong together."""
    run_dir = Path(run_dir)
    state_path = run_dir / f"{tag}.state.pt"
    if not state_path.is_file():
        raise WeightsError(f"no {tag!r} checkpoint in {run_dir} ({state_path.name} is missing)")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read {state_path}: {exc}") from exc
    # A crash between the two renames leaves the old weights in the .prev link.
    for candidate in (run_dir / f"{tag}.safetensors", run_dir / f"{tag}.safetensors.prev"):
        if not candidate.is_file():
            continue
        try:
            token, epoch = _weights_token(candidate)
        except Exception:
            continue
        if token == state.get("token") and epoch == state.get("epoch"):
            return Checkpoint(_read_weights(candidate), state, candidate)
    raise WeightsError(
        f"the {tag!r} checkpoint in {run_dir} is inconsistent: {tag}.safetensors does not belong "
        f"to {tag}.state.pt (epoch {state.get('epoch')})"
    )
