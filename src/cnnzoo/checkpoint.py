"""Crash-safe checkpoints: a ``TAG.safetensors`` (weights) + ``TAG.state.pt`` (everything else).

Every file is written to a temporary name in the same directory, flushed and fsynced, then moved
into place with ``os.replace`` and the directory fsynced, so a crash or ``kill -9`` at any moment
leaves either the old or the new file, never a torn one. A pair must also stay consistent: both
files carry the same random ``token`` (and the epoch). The weights are replaced first, the state
last, and the weights being replaced are kept as a hard link ``TAG.safetensors.prev`` until the
state is in place, so a crash between the two renames still finds the old pair on load. Loading and
the next save first repair such a pair (the ``.prev`` weights go back into place), so a second
crash during the next save cannot lose the only weights that match the state.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from cnnzoo.errors import CnnzooError, WeightsError

__all__ = [
    "Checkpoint",
    "CheckpointWriteError",
    "atomic_write_bytes",
    "checkpoint_exists",
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


class CheckpointWriteError(CnnzooError):
    """A checkpoint file could not be written (disk full, read-only folder); the previous
    checkpoint is intact."""

    def __init__(self, path: Path, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        super().__init__(f"cannot write {path}: {reason}")
        self.path = path
        self.errno = exc.errno


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a fsynced temporary file beside ``path``; nothing is left behind on failure."""
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise CheckpointWriteError(path, exc) from exc
        raise
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
    ``torch.load(weights_only=True)``) and an integer ``"epoch"``. A failure to write (disk
    full) raises :class:`CheckpointWriteError` and leaves the previous pair as it was.
    """
    run_dir = Path(run_dir)
    weights_path, state_path, backup = _pair_paths(run_dir, tag)
    _repair_pair(run_dir, tag)
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
        # After _repair_pair a .prev left here is stale: the weights in place match the state.
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


def _pair_paths(run_dir: Path, tag: str) -> tuple[Path, Path, Path]:
    """(weights, state, backup of the weights being replaced) of checkpoint ``tag``."""
    return (
        run_dir / f"{tag}.safetensors",
        run_dir / f"{tag}.state.pt",
        run_dir / f"{tag}.safetensors.prev",
    )


def _belongs(weights_path: Path, state: Mapping[str, Any]) -> bool:
    if not weights_path.is_file():
        return False
    try:
        token, epoch = _weights_token(weights_path)
    except Exception:  # a torn or foreign file belongs to nothing
        return False
    return token == state.get("token") and epoch == state.get("epoch")


def _read_state(state_path: Path) -> dict[str, Any]:
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = " ".join(str(exc).split())
        if "Weights only load failed" in text or "Unsupported global" in text:
            reason = "it holds objects other than plain data and tensors, so it was not loaded"
        else:
            reason = f"corrupt or truncated ({type(exc).__name__})"
        raise WeightsError(f"cannot read {state_path}: {reason}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
        raise WeightsError(f"cannot read {state_path}: not a cnnzoo checkpoint state")
    return state


def _repair_pair(run_dir: Path, tag: str) -> None:
    """Undo a crash between the two renames of :func:`save_checkpoint`.

    Such a crash leaves the new weights in place, the old state, and the old weights in the
    ``.prev`` link: the ``.prev`` weights go back into place (one atomic rename). A ``.prev``
    beside a consistent pair is stale and goes. A read-only run directory stays as it is
    (loading still finds the ``.prev`` weights).
    """
    weights_path, state_path, backup = _pair_paths(run_dir, tag)
    if not backup.exists() or not state_path.is_file():
        return
    try:
        state = _read_state(state_path)
    except WeightsError:
        return  # reported by whoever loads it; never guess which weights to keep
    with contextlib.suppress(OSError):
        if _belongs(weights_path, state):
            backup.unlink()
        elif _belongs(backup, state):
            os.replace(backup, weights_path)
            _fsync_dir(run_dir)


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
    """Whether checkpoint ``tag`` has its state file (loading says what else may be missing)."""
    return (Path(run_dir) / f"{tag}.state.pt").is_file()


def load_checkpoint(run_dir: str | Path, tag: str) -> Checkpoint:
    """Load the pair ``tag`` from ``run_dir``, checking that weights and state belong together."""
    run_dir = Path(run_dir)
    weights_path, state_path, backup = _pair_paths(run_dir, tag)
    if not state_path.is_file():
        if weights_path.is_file() or backup.is_file():
            raise WeightsError(
                f"{run_dir}: {weights_path.name} has no {state_path.name} beside it (the epoch, "
                "optimizer and schedule state), so the run cannot continue where it stopped"
            )
        raise WeightsError(f"no {tag!r} checkpoint in {run_dir} ({state_path.name} is missing)")
    _repair_pair(run_dir, tag)
    state = _read_state(state_path)
    # A read-only directory could not be repaired: the .prev link still has the old weights.
    for candidate in (weights_path, backup):
        if _belongs(candidate, state):
            return Checkpoint(_read_weights(candidate), state, candidate)
    raise WeightsError(
        f"the {tag!r} checkpoint in {run_dir} is inconsistent: {tag}.safetensors does not belong "
        f"to {tag}.state.pt (epoch {state.get('epoch')})"
    )
