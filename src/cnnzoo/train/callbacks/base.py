"""Keras' callback protocol, and the list the trainer calls.

A callback's hooks get Keras' arguments: ``epoch`` and ``batch`` are 0-based, and ``logs`` uses
Keras' names: ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``lr`` (plus ``seconds``
and ``images_per_s``). Batch logs hold the epoch's running ``loss`` and ``accuracy``, refreshed
every ``progress_every`` steps (the trainer reads values off the device only then). Setting
``trainer.stop_training = True`` ends training after the current batch (from a batch hook; under
DDP at the next ``progress_every`` step, where the ranks agree) or epoch; the epoch still ends
with validation, ``on_epoch_end`` and a checkpoint, as in Keras. ``on_test_begin/end`` surround
the final scoring on the test split (not the per-epoch validation); ``close()`` is called once
when the run ends, however it ends.

Under DistributedDataParallel every rank calls every callback, except those whose class sets
``main_process_only = True`` (files and printing: ModelCheckpoint, CSVLogger, TensorBoard,
ProgressBar, Plots), which run on rank 0 only. Logs are reduced over ranks before the hooks run,
so callbacks that decide (EarlyStopping, ReduceLROnPlateau) decide the same on every rank;
``stop_training`` set on any rank stops every rank.

A callback's :meth:`state_dict` goes into the run's ``last`` checkpoint, so a resumed run
continues its counters and bests; it must hold plain Python values and tensors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from cnnzoo.train.trainer import Trainer

__all__ = ["Callback", "CallbackList", "Monitor", "as_callback", "with_defaults"]

C = TypeVar("C", bound="Callback")


class Callback:
    """Base class: override the hooks you need (Keras' names and arguments)."""

    main_process_only = False

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.model: Any = None

    def set_trainer(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.model = trainer.model

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None: ...
    def on_train_end(self, logs: dict[str, Any] | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None: ...
    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None: ...
    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None: ...
    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None: ...
    def on_test_end(self, logs: dict[str, Any] | None = None) -> None: ...
    def close(self) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def replaces(self, other: Callback) -> bool:
        """Whether this (user's) callback takes the place of ``other`` (one the config asked
        for): by default, when they are of the same class."""
        return type(self) is type(other)


HOOKS = (
    "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
    "on_train_batch_end", "on_test_begin", "on_test_end",
)  # fmt: skip
# Keras' older names for the batch hooks, which its callbacks still answer to.
HOOK_ALIASES = {"on_train_batch_begin": "on_batch_begin", "on_train_batch_end": "on_batch_end"}


class _DuckCallback(Callback):
    """An object that is not a :class:`Callback` but has some of its hooks (as PyTorch users
    often write them): the hooks it has are called, the others are no-ops, and its own
    ``state_dict``, ``close``, ``set_trainer`` (or Keras' ``set_model``) are used if it has
    them."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.main_process_only = bool(getattr(wrapped, "main_process_only", False))
        for hook in HOOKS:
            method = _method(wrapped, hook) or _method(wrapped, HOOK_ALIASES.get(hook, ""))
            if method is not None:
                setattr(self, hook, method)

    def set_trainer(self, trainer: Trainer) -> None:
        super().set_trainer(trainer)
        if (method := _method(self.wrapped, "set_trainer")) is not None:
            method(trainer)
        elif (method := _method(self.wrapped, "set_model")) is not None:
            method(trainer.model)

    def state_dict(self) -> dict[str, Any]:
        method = _method(self.wrapped, "state_dict")
        return method() if method is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (method := _method(self.wrapped, "load_state_dict")) is not None:
            method(state)

    def close(self) -> None:
        if (method := _method(self.wrapped, "close")) is not None:
            method()


def _method(obj: Any, name: str) -> Any:
    method = getattr(obj, name, None) if name else None
    return method if callable(method) else None


def as_callback(obj: Any) -> Callback:
    """``obj`` as a :class:`Callback`: itself, or a duck-typed object with at least one of
    Keras' ``on_*`` hooks wrapped; anything else is a TypeError that says what a callback is."""
    if isinstance(obj, Callback):
        return obj
    if any(_method(obj, hook) for hook in (*HOOKS, *HOOK_ALIASES.values())):
        return _DuckCallback(obj)
    raise TypeError(
        f"callbacks: {obj!r} is not a callback; subclass cnnzoo.callbacks.Callback or give an "
        "object with Keras' hooks, e.g. on_epoch_end(self, epoch, logs)"
    )


def with_defaults(defaults: Iterable[Callback], given: Iterable[Callback]) -> list[Callback]:
    """The config's callbacks, then the user's; a user's callback that :meth:`~Callback.replaces`
    one of the config's takes its place (a user's TensorBoard writes where it says, not also
    into the run; the run's own history.csv and best checkpoint stay)."""
    given = list(given)
    return [cb for cb in defaults if not any(mine.replaces(cb) for mine in given)] + given


class CallbackList:
    """The callbacks of one run, called in order (main-process-only ones on rank 0 only)."""

    def __init__(self, callbacks: Iterable[Callback], is_main: bool = True) -> None:
        self.callbacks = list(callbacks)
        self.is_main = is_main

    def __iter__(self) -> Iterator[Callback]:
        return iter(self.callbacks)

    def find(self, kind: type[C]) -> list[C]:
        return [cb for cb in self.callbacks if isinstance(cb, kind)]

    def set_trainer(self, trainer: Trainer) -> None:
        for callback in self.callbacks:
            callback.set_trainer(trainer)

    def call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            if self.is_main or not callback.main_process_only:
                getattr(callback, hook)(*args)

    def close(self) -> None:
        for callback in self.callbacks:
            callback.close()

    def _keys(self) -> list[str]:
        """Each callback's name in the checkpoint: its class, numbered from the second of a
        class on (so adding a callback of another class does not renumber the others)."""
        seen: dict[str, int] = {}
        keys = []
        for callback in self.callbacks:
            name = type(getattr(callback, "wrapped", callback)).__name__
            seen[name] = seen.get(name, 0) + 1
            keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
        return keys

    def state_dict(self) -> dict[str, Any]:
        return {key: cb.state_dict() for key, cb in zip(self._keys(), self.callbacks, strict=True)}

    def load_state_dict(self, state: dict[str, Any]) -> list[str]:
        """Restore each callback's state; the keys of saved states no callback took (the run was
        saved with other callbacks) are returned, for a warning."""
        keys = self._keys()
        for key, callback in zip(keys, self.callbacks, strict=True):
            if key in state:
                callback.load_state_dict(state[key])
        return [key for key, saved in state.items() if key not in keys and saved]


class Monitor:
    """A monitored quantity and its direction, with Keras' improvement rule (``min_delta``
    must be beaten: ``current < best - min_delta`` for ``min``)."""

    def __init__(self, name: str, mode: str = "auto", min_delta: float = 0.0) -> None:
        from cnnzoo.train.config import canonical_monitor

        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be auto, min or max; got {mode!r}")
        self.name = canonical_monitor(name)
        higher = any(word in self.name for word in ("acc", "top", "f1", "auc"))
        self.higher_is_better = mode == "max" or (mode == "auto" and higher)
        self.min_delta = abs(min_delta)
        self._warned = False

    @property
    def mode(self) -> str:
        return "max" if self.higher_is_better else "min"

    def worst(self) -> float:
        return -math.inf if self.higher_is_better else math.inf

    def improved(self, current: float, best: float | None) -> bool:
        if best is None:
            best = self.worst()
        if self.higher_is_better:
            return current - self.min_delta > best
        return current + self.min_delta < best

    def value(self, logs: dict[str, Any] | None, owner: str) -> float | None:
        """The monitored value in ``logs``; a missing one warns once (as Keras does)."""
        value = (logs or {}).get(self.name)
        if value is None and not self._warned:
            self._warned = True
            available = ", ".join(sorted(logs or {})) or "none"
            warnings.warn(
                f"{owner}: {self.name} is not in the logs (available: {available}); skipping",
                stacklevel=3,
            )
        return None if value is None else float(value)
