"""Pairwise sums of element-wise minima between sparse non-negative rows.

Both the k-reciprocal Jaccard distance (Zhong et al. 2017) and the top-k cross-camera weighted
Jaccard need `M[i, j] = sum_k min(A[i, k], B[j, k])` for sparse `A`, `B`. Only the coordinates `k`
where both rows are non-zero contribute, so the sum is gathered through an inverted index of `B`
(for every column `k`, the rows `j` with `B[j, k] > 0`): cost is the number of such (i, j, k)
triples, memory one dense output block plus a bounded number of triples at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# At most this many (i, j, k) triples are expanded at once (~4 M: 3 int64 + 1 float32 each), and
# the dense rows they scatter into stay within ~8 MB so the scattered adds hit the cache.
_MAX_TRIPLES = 1 << 22
_MAX_SCATTER_ELEMENTS = 1 << 21


@dataclass
class SparseRows:
    """A sparse (num_rows, num_cols) matrix in compressed form along its rows.

    `ptr[r]:ptr[r+1]` delimit row `r`'s entries in `index` (their column) and `value`. The same
    structure read "by column" (built with `by_column`) is the inverted index.
    """

    ptr: torch.Tensor
    index: torch.Tensor
    value: torch.Tensor

    @classmethod
    def from_coo(cls, rows, cols, values, num_rows: int) -> "SparseRows":
        """Compress (row, col, value) triples; entries of one row keep their column order."""
        order = torch.argsort(rows * (int(cols.max()) + 1 if cols.numel() else 1) + cols)
        rows, cols, values = rows[order], cols[order], values[order]
        counts = torch.bincount(rows, minlength=num_rows)
        ptr = torch.zeros(num_rows + 1, dtype=torch.long, device=rows.device)
        ptr[1:] = torch.cumsum(counts, 0)
        return cls(ptr, cols, values)

    @classmethod
    def by_column(cls, rows, cols, values, num_cols: int) -> "SparseRows":
        return cls.from_coo(cols, rows, values, num_cols)

    def row_lengths(self) -> torch.Tensor:
        return self.ptr[1:] - self.ptr[:-1]


def _row_chunks(left: SparseRows, right_by_col: SparseRows, start: int, stop: int, max_rows: int):
    """Split rows [start, stop) into runs of at most `max_rows` rows and `_MAX_TRIPLES` triples."""
    entry_cost = right_by_col.row_lengths()[left.index[left.ptr[start]:left.ptr[stop]]]
    cumulative = torch.zeros(entry_cost.numel() + 1, dtype=torch.long, device=entry_cost.device)
    cumulative[1:] = torch.cumsum(entry_cost, 0)
    row_cost_end = cumulative[(left.ptr[start + 1:stop + 1] - left.ptr[start])].tolist()
    chunk_start, consumed = start, 0
    for row, cost_end in enumerate(row_cost_end, start=start):
        too_big = cost_end - consumed > _MAX_TRIPLES or row - chunk_start >= max_rows
        if too_big and row > chunk_start:
            yield chunk_start, row
            chunk_start = row
            consumed = row_cost_end[row - 1 - start]
    yield chunk_start, stop


def expand_rows(matrix: SparseRows, which: torch.Tensor, first: torch.Tensor | None = None):
    """Entries of rows `which` of `matrix`, concatenated: `(owner, slot)` with `owner[t]` the
    position in `which` the entry came from and `slot[t]` its position in `matrix.index/value`.
    With `first`, row `which[t]` is taken from slot `first[t]` on (a suffix of the row)."""
    if first is None:
        first = matrix.ptr.index_select(0, which)
    counts = matrix.ptr.index_select(0, which + 1) - first
    owner = torch.repeat_interleave(torch.arange(which.numel(), device=which.device), counts)
    # slot = first[owner] + (position of the entry within its run), with one gather
    offset = first - (torch.cumsum(counts, 0) - counts)
    slot = torch.arange(owner.numel(), device=which.device).add_(offset.index_select(0, owner))
    return owner, slot


def min_sums(left: SparseRows, right_by_col: SparseRows, start: int, stop: int, num_right: int):
    """Dense float32 block `M[i - start, j] = sum_k min(left[i, k], right[j, k])`, i in [start, stop).

    `right_by_col` is the right matrix compressed by column (its inverted index). CPU sums are
    deterministic; on CUDA `index_add_` uses atomics, so the last bits may vary between runs.
    """
    out = torch.zeros(stop - start, num_right, dtype=torch.float32, device=left.ptr.device)
    for _ in min_sum_chunks(left, right_by_col, start, stop, num_right, out):
        pass  # each run has added into its own rows of `out`
    return out


def own_slots(by_row: SparseRows, by_col: SparseRows, num_rows: int) -> torch.Tensor:
    """For each entry (i, k) of `by_row`, the slot of row i in column k of `by_col` (the same
    matrix compressed by column, rows ascending within a column)."""
    device = by_row.ptr.device
    col_keys = torch.repeat_interleave(torch.arange(by_col.ptr.numel() - 1, device=device), by_col.row_lengths())
    col_keys = col_keys * num_rows + by_col.index  # ascending: by column, then row
    rows = torch.repeat_interleave(torch.arange(num_rows, device=device), by_row.row_lengths())
    return torch.searchsorted(col_keys, by_row.index * num_rows + rows)


def min_sum_chunks(left: SparseRows, right_by_col: SparseRows, start: int, stop: int, num_right: int,
                   out: torch.Tensor | None = None, from_slots: torch.Tensor | None = None):
    """Yield `(lo, hi, M[lo:hi])` for consecutive row runs covering [start, stop).

    Each run's block holds at most `_MAX_SCATTER_ELEMENTS` entries; it is a view of `out` (rows
    `start:stop`) when given, else a fresh buffer reused by the next run, so a caller that keeps
    only a few entries of each run never holds a (rows x N) block. The sums are the same, bit for
    bit, either way: each entry receives the same additions in the same order.

    `from_slots` (for a symmetric product, `left` and `right_by_col` the same matrix, slots from
    `own_slots`) restricts each entry (i, k) to the rows j >= i of column k: only the upper
    triangle (diagonal included) is summed, half the work. `M[i, j]` gets the additions over the
    shared k in ascending order, as `M[j, i]` does, so the lower triangle is the mirror bit for bit.
    """
    device = left.ptr.device
    max_rows = max(1, _MAX_SCATTER_ELEMENTS // num_right)
    scratch = None
    for lo, hi in _row_chunks(left, right_by_col, start, stop, max_rows):
        if out is not None:
            block = out[lo - start:hi - start]
        else:
            if scratch is None:
                scratch = torch.empty(max_rows * num_right, dtype=torch.float32, device=device)
            block = scratch[:(hi - lo) * num_right].view(hi - lo, num_right).zero_()
        _scatter_min_sums(left, right_by_col, lo, hi, num_right, block.view(-1), from_slots)
        yield lo, hi, block


def _scatter_min_sums(left: SparseRows, right_by_col: SparseRows, lo: int, hi: int, num_right: int,
                      flat: torch.Tensor, from_slots: torch.Tensor | None = None) -> None:
    """Add `sum_k min(left[i, k], right[j, k])` into `flat[(i - lo) * num_right + j]`."""
    first, last = int(left.ptr[lo]), int(left.ptr[hi])
    if first == last:
        return
    # Per entry of `left` (row i, column k): where row i starts in `flat`. Per (i, j, k) triple
    # only gathers and one add follow, in the order the triples are listed (so the sums, added
    # by index_add_ in that order, do not depend on how the rows were split into runs).
    row_start = torch.repeat_interleave(torch.arange(0, (hi - lo) * num_right, num_right, device=flat.device),
                                        left.row_lengths()[lo:hi])
    suffix = None if from_slots is None else from_slots[first:last]
    owner, slot = expand_rows(right_by_col, left.index[first:last], suffix)
    # index_select, not advanced indexing: the same values, about twice as fast on CPU
    mins = torch.minimum(left.value[first:last].float().index_select(0, owner),
                         right_by_col.value.index_select(0, slot).float())
    flat.index_add_(0, row_start.index_select(0, owner).add_(right_by_col.index.index_select(0, slot)), mins)
