"""Seeded, stratified partitions of a labelled set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnnzoo.errors import UsageError


def stratified_order(labels: Sequence[int] | np.ndarray, seed: int) -> np.ndarray:
    """A seeded ordering of ``range(len(labels))`` whose every prefix is stratified.

    Each sample gets the key ``(rank within its class + offset_c) / class size`` (ranks shuffled,
    ``offset_c`` uniform per class), so the first ``k`` of the order hold each class in proportion
    to its size, to within one sample: splitting is then just cutting this order.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels), dtype=np.float64)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        keys[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return np.argsort(keys, kind="stable")


def stratified_split(
    labels: Sequence[int] | np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held_out) sorted index arrays; ``held_out`` is ``round(fraction * n)`` samples."""
    if not 0.0 <= fraction < 1.0:
        raise UsageError(f"val_split must be in [0, 1), got {fraction}")
    order = stratified_order(labels, seed)
    n_out = int(round(fraction * len(order)))
    return np.sort(order[n_out:]), np.sort(order[:n_out])


def split_counts(total: int, split: Sequence[float] | Sequence[int]) -> tuple[int, int, int]:
    """(train, val, test) sizes from ratios (floats summing to at most 1) or counts (ints)."""
    if len(split) != 3:
        raise UsageError(f"split needs three numbers (train, val, test), got {tuple(split)}")
    if any(v < 0 for v in split):
        raise UsageError(f"split sizes must not be negative, got {tuple(split)}")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in split):
        counts = tuple(int(v) for v in split)
        if sum(counts) > total:
            raise UsageError(f"split {counts} asks for {sum(counts)} images; only {total} found")
        return counts  # type: ignore[return-value]
    ratios = [float(v) for v in split]
    if sum(ratios) > 1.0 + 1e-6:
        raise UsageError(f"split ratios {tuple(ratios)} sum to more than 1")
    val, test = (int(round(r * total)) for r in ratios[1:])
    # Ratios that sum to one must use every image, whatever the rounding did.
    train = total - val - test if abs(sum(ratios) - 1.0) < 1e-6 else int(round(ratios[0] * total))
    return train, val, test


def split_parts(
    values: Sequence[float] | str | None,
) -> tuple[float, ...] | tuple[int, ...] | None:
    """A (train, val, test) split as the loader takes it: whole numbers summing to more than 1
    are image counts (400/92/10), anything else fractions (0.8/0.1/0.1). A string such as
    ``"400/92/10"`` (``/`` or ``,`` between the parts) is read first."""
    if values is None:
        return None
    if isinstance(values, str):
        values = parse_split(values)
    if sum(values) > 1 and all(float(v).is_integer() for v in values):
        return tuple(int(v) for v in values)
    return tuple(float(v) for v in values)


def parse_split(text: str) -> list[float]:
    """``"400/92/10"`` or ``"0.8,0.1,0.1"`` -> three numbers; a UsageError for anything else."""
    parts = [part.strip() for part in text.replace(",", "/").split("/")]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 3:
        raise UsageError(
            f"split must be TRAIN/VAL/TEST, as counts (400/92/10) or fractions (0.8/0.1/0.1); "
            f"got {text!r}"
        )
    return values


def partition(
    labels: Sequence[int] | np.ndarray, counts: tuple[int, int, int], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified (train, val, test) sorted index arrays of the given sizes.

    The test part is cut first, so it does not move when only the validation size changes.
    """
    train, val, test = counts
    order = stratified_order(labels, seed)
    return (
        np.sort(order[test + val : test + val + train]),
        np.sort(order[test : test + val]),
        np.sort(order[:test]),
    )
