"""The one check that numbers read for training are numbers: a NaN or an infinity in a cached
target or a region feature would otherwise flow into the loss, and a run could finish
"complete" on it (issue 31)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from madcache.core.errors import CacheCorruptError


def non_finite_rows(array) -> np.ndarray:
    """Indices along the first axis of the rows holding a NaN or an infinity (floats only)."""
    values = np.asarray(array)
    if values.dtype.kind not in "fc" or values.size == 0:
        return np.zeros(0, dtype=np.int64)
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    return np.flatnonzero(bad)


def check_finite(
    arrays: Mapping[str, object], ids: Sequence[str], *, source: object, fix: str
) -> None:
    """Refuse arrays whose rows (aligned with `ids`) hold a non-finite number: one line naming
    `source`, the array, how many rows and the first ids, and `fix` (what to do)."""
    for name, array in arrays.items():
        if array is None:
            continue
        if hasattr(array, "detach"):
            array = array.detach().cpu().numpy()
        rows = non_finite_rows(array)
        if len(rows):
            shown = ", ".join(repr(ids[r]) for r in rows[:3])
            raise CacheCorruptError(
                f"{source}: {name} holds NaN or infinite values in "
                f"{len(rows)} of {len(ids)} rows read (e.g. {shown}); {fix}"
            )
