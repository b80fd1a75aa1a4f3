"""Index arithmetic on condensed symmetric matrices (SciPy's layout), and reads that avoid copies.

A condensed vector holds the strict upper triangle of an (N, N) matrix row after row: entry
(i, j), i < j, sits at `start(i) + (j - i - 1)` with `start(i) = i (2N - i - 1) / 2`, the first
slot of row i's segment. Row i of the full symmetric matrix is therefore column i of the rows
before it (one entry in each of their segments) followed by its own segment (contiguous).

The column part is the expensive read: its entries lie one segment apart. Reading a block of
consecutive rows at once turns it into one contiguous run per earlier row (entries (j, a..b-1) are
neighbours in row j's segment), which is what `symmetric_rows` does.
"""

from __future__ import annotations

import numpy as np

# Entries gathered at once when reading the column part of a block of rows (index temporaries
# are int64: 8 bytes each).
_GATHER_ELEMENTS = 1 << 22


def num_samples(size: int) -> int:
    """N such that N (N - 1) / 2 == size; ValueError when there is none (or size is 0)."""
    n = int(round((1 + np.sqrt(1 + 8 * size)) / 2))
    if n * (n - 1) // 2 != size or size == 0:
        raise ValueError(
            f"a 1-D dist must be a condensed matrix of length N (N - 1) / 2 >= 1, got {size}"
        )
    return n


def segment_starts(n: int) -> np.ndarray:
    """(N,) int64: where row i's segment (entries (i, i+1..N-1)) starts in the condensed vector."""
    i = np.arange(n, dtype=np.int64)
    return i * (2 * n - i - 1) // 2


def pair_index(starts: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Condensed positions of the pairs (rows[t], cols[t]), rows[t] != cols[t], in either order."""
    low, high = np.minimum(rows, cols), np.maximum(rows, cols)
    return starts[low] + (high - low - 1)


def column_bases(starts: np.ndarray) -> np.ndarray:
    """`bases[k] + i` is the position of (k, i) for k < i: one add per entry of a column read."""
    return starts - np.arange(starts.size, dtype=np.int64) - 1


def read_row(condensed: np.ndarray, starts: np.ndarray, bases: np.ndarray, i: int,
             out: np.ndarray) -> np.ndarray:
    """Row i of the symmetric matrix into `out` (length N; `out[i]` is left untouched)."""
    n = starts.size
    out[:i] = condensed[bases[:i] + i]
    out[i + 1:] = condensed[starts[i]:starts[i] + n - 1 - i]
    return out


def write_row(condensed: np.ndarray, starts: np.ndarray, bases: np.ndarray, i: int,
              values: np.ndarray) -> None:
    """Store `values` (length N, `values[i]` ignored) as row and column i (rounded to the
    condensed dtype)."""
    n = starts.size
    condensed[bases[:i] + i] = values[:i]
    condensed[starts[i]:starts[i] + n - 1 - i] = values[i + 1:]


def symmetric_rows(condensed: np.ndarray, starts: np.ndarray, start: int, stop: int,
                   diagonal: np.ndarray | None = None) -> np.ndarray:
    """Rows start..stop-1 of the full symmetric matrix, (stop - start, N), condensed dtype.

    The diagonal is `diagonal[start:stop]` when given, else 0.
    """
    n, rows = starts.size, stop - start
    out = np.empty((rows, n), dtype=condensed.dtype)
    for r, i in enumerate(range(start, stop)):
        out[r, i + 1:] = condensed[starts[i]:starts[i] + n - 1 - i]
    square = out[:, start:stop]
    below = np.tril_indices(rows, -1)
    square[below] = square.T[below]  # (a, b), a > b, mirrors (b, a), read just above
    square[np.arange(rows), np.arange(rows)] = 0 if diagonal is None else diagonal[start:stop]
    # Columns j < start: entries (j, start..stop-1), one contiguous run in each row j's segment.
    step = max(1, _GATHER_ELEMENTS // max(rows, 1))
    offsets = np.arange(rows, dtype=np.int64)
    for lo in range(0, start, step):
        hi = min(start, lo + step)
        first = starts[lo:hi] + (start - np.arange(lo, hi, dtype=np.int64) - 1)
        out[:, lo:hi] = condensed[first[:, None] + offsets[None, :]].T
    return out


def write_upper_rows(condensed: np.ndarray, starts: np.ndarray, start: int,
                     block: np.ndarray, first_column: int = 0) -> None:
    """Store the strict upper part of rows start.. (block: (rows, N - first_column), its columns
    first_column.., any float dtype)."""
    n = starts.size
    for r in range(block.shape[0]):
        i = start + r
        if i < n - 1:
            condensed[starts[i]:starts[i] + n - 1 - i] = block[r, i + 1 - first_column:]


def sortable_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys whose order is the order of the float32 `values` (NaN excluded): flip the
    sign bit of non-negative numbers, all bits of negative ones (IEEE 754 sign-magnitude)."""
    bits = values.view(np.uint32)
    negative = (bits >> np.uint32(31)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint32(1 << 31))


def kth_smallest_float32(values: np.ndarray, k: int, chunk: int = 1 << 22) -> float:
    """The k-th smallest (0-based) of a float32 vector, exactly, without a copy of it.

    A two-pass radix selection on the order-preserving uint32 keys: count the high 16 bits (one
    pass, bounded chunks), find the bucket holding rank k, then count the low 16 bits inside it.
    Equals `np.partition(values, k)[k]`, whose copy would double the memory of a large vector.
    """
    high = np.zeros(1 << 16, dtype=np.int64)
    for lo in range(0, values.size, chunk):
        high += np.bincount(sortable_keys(values[lo:lo + chunk]) >> np.uint32(16), minlength=1 << 16)
    below = np.cumsum(high)
    bucket = int(np.searchsorted(below, k, side="right"))
    rank = k - (int(below[bucket - 1]) if bucket else 0)
    low = np.zeros(1 << 16, dtype=np.int64)
    for lo in range(0, values.size, chunk):
        keys = sortable_keys(values[lo:lo + chunk])
        inside = keys[(keys >> np.uint32(16)) == bucket]
        low += np.bincount(inside & np.uint32(0xFFFF), minlength=1 << 16)
    low_bits = int(np.searchsorted(np.cumsum(low), rank, side="right"))
    key = np.uint32((bucket << 16) | low_bits)
    return _float_of_key(key)


def _float_of_key(key: np.uint32) -> float:
    """Invert `sortable_keys` for one key."""
    bits = key & np.uint32(0x7FFFFFFF) if key >> np.uint32(31) else ~key
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])
