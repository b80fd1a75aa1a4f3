"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), torch-native and memory-bounded.

Follows the IICS/IIDS reference `re_ranking(dist, k1, k2, lambda_value)` step by step:

1. Normalise each row: `orig[i, j] = (D[i, j] - min_j' D[i, j']) / max_j' (D[i, j'] - min_j' D[i, j'])`.
   (The reference scales the columns of `D` and transposes; for a symmetric `D`, as every distance
   of this library, that is the same. For a non-symmetric `D`, pass `D.T` to get the reference's
   result: rows are read as "distances from i", which keeps every read contiguous.)
2. `initial_rank[i]`: the neighbours of `i` by ascending `orig[i]` (self included).
3. `R(i, k1)`: the k-reciprocal neighbours among the first `k1 + 1`; expanded by `R(j, round(k1/2))`
   of every `j` in `R(i, k1)` that shares more than 2/3 of its own set with `R(i, k1)`.
4. `V[i, j] = exp(-orig[i, j])`, normalised to sum 1 over the expanded set; query expansion
   replaces `V[i]` by the mean of the rows of its `k2` nearest neighbours.
5. `jaccard[i, j] = 1 - m / (2 - m)` with `m = sum_k min(V[i, k], V[j, k])`, clipped at 0;
   result `(1 - lambda) * jaccard + lambda * orig`.

Where the reference holds five dense N x N arrays (35 GB on MSMT17 query + gallery), this holds `V`
as sparse rows (O(N * k) entries), the neighbour lists (O(N * k)), and one block of rows at a time;
only the requested output is dense. Distances can come from a matrix or straight from L2-normalised
features (cosine distance), so nothing N x N is ever needed for `rerank_blocks`.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import as_float_matrix, check_no_nan, check_positive_int
from ._condensed import num_samples, pair_index, segment_starts, symmetric_rows, write_upper_rows
from ._sparse import SparseRows, expand_rows, min_sum_chunks, min_sums, own_slots

_STORAGE_DTYPES = (torch.float32, torch.float16)
# Rows per block when scanning distances: a block is (rows x N) float32.
_BLOCK_ELEMENTS = 1 << 24


class _MatrixSource:
    """Distances held in an (N, N) matrix; row blocks are views, no copy."""

    def __init__(self, dist: torch.Tensor):
        self.dist = dist
        self.n = dist.shape[0]
        self.device = dist.device

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.dist[start:stop]

    def entries(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return self.dist[rows, cols].float()


class _CosineSource:
    """Cosine distances `1 - <f_i, f_j>` of L2-normalised features, computed block by block."""

    def __init__(self, features: torch.Tensor):
        self.features = F.normalize(features.float(), dim=1)
        self.n = features.shape[0]
        self.device = features.device

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return torch.mm(self.features[start:stop], self.features.t()).neg_().add_(1.0)

    def entries(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        # Pairs in chunks: gathering all (rows, D) feature pairs at once costs nnz x D floats
        # (27 GB for MSMT17-size 2048-d features); each pair's sum is unchanged by chunking.
        out = torch.empty(rows.numel(), dtype=torch.float32, device=self.device)
        step = max(1, (1 << 22) // max(1, self.features.shape[1]))
        for start in range(0, rows.numel(), step):
            r, c = rows[start:start + step], cols[start:start + step]
            # index_select: a plain row copy, several times faster on CPU than advanced indexing
            pairs = self.features.index_select(0, r).mul_(self.features.index_select(0, c))
            out[start:start + step] = 1.0 - pairs.sum(dim=1)
        return out


class _CondensedSource:
    """Distances of a symmetric matrix held as its condensed upper triangle (a 1-D NumPy
    vector, SciPy's layout) plus its diagonal: row i is column i of the rows before it and its
    own segment (`_condensed.symmetric_rows`)."""

    def __init__(self, condensed: np.ndarray, diagonal: np.ndarray | None):
        self.condensed = condensed
        self.n = num_samples(condensed.size)
        self.starts = segment_starts(self.n)
        self.diagonal = None if diagonal is None else np.asarray(diagonal, dtype=condensed.dtype)
        self.device = torch.device("cpu")

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return torch.from_numpy(symmetric_rows(self.condensed, self.starts, start, stop, self.diagonal))

    def entries(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        r, c = rows.numpy(), cols.numpy()
        off = r != c
        out = np.zeros(r.size, dtype=np.float32)
        out[off] = self.condensed[pair_index(self.starts, r[off], c[off])]
        if self.diagonal is not None:
            out[~off] = self.diagonal[r[~off]]
        return torch.from_numpy(out)


def _blocks(n: int, chunk_size: int | None):
    step = chunk_size or max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _scan(source, num_neighbours: int, chunk_size):
    """Per-row min, scale and the first `num_neighbours` of `initial_rank` (one pass over D)."""
    row_min = torch.empty(source.n, device=source.device)
    scale = torch.empty(source.n, device=source.device)
    ranks = torch.empty(source.n, num_neighbours, dtype=torch.long, device=source.device)
    for start, stop in _blocks(source.n, chunk_size):
        rows = source.rows(start, stop)
        row_min[start:stop], scale[start:stop] = torch.aminmax(rows, dim=1)
        # min-max scaling is increasing, so ranking the raw rows ranks the normalised ones.
        ranks[start:stop] = torch.topk(rows, num_neighbours, dim=1, largest=False).indices
    # min and max propagate NaN: one look at them covers every entry.
    check_no_nan(torch.stack([row_min, scale], dim=1), "dist")
    scale -= row_min
    # A constant row normalises to 0 everywhere instead of 0/0.
    scale[scale == 0] = 1.0
    return row_min, scale, ranks


def _reciprocal(ranks: torch.Tensor, k: int):
    """`R(i, k)`: neighbours among the first k+1 of `i` that have `i` among their first k+1."""
    forward = ranks[:, : k + 1]
    mask = torch.empty_like(forward, dtype=torch.bool)
    for start, stop in _blocks(forward.shape[0], max(1, (1 << 22) // (k + 1) ** 2)):
        backward = forward[forward[start:stop]]
        own = torch.arange(start, stop, device=ranks.device)[:, None, None]
        mask[start:stop] = (backward == own).any(dim=-1)
    return forward, mask


def _expanded_sets(ranks: torch.Tensor, k1: int):
    """Reference step 3: padded (N, W) neighbour sets (sentinel N) and their validity mask."""
    n = ranks.shape[0]
    half = round(k1 / 2)  # banker's rounding, as np.around in the reference
    forward, recip = _reciprocal(ranks, k1)
    forward_half, recip_half = _reciprocal(ranks, half)
    parts = []
    for start, stop in _blocks(n, max(1, (1 << 22) // ((k1 + 1) ** 2 * (half + 1)))):
        own, own_mask = forward[start:stop], recip[start:stop]
        cand, cand_mask = forward_half[own], recip_half[own] & own_mask[:, :, None]
        in_own = _is_member(cand, torch.where(own_mask, own, n))
        shared = (in_own & cand_mask).sum(-1)
        accept = 3 * shared > 2 * cand_mask.sum(-1)  # |R(j) & R(i)| > 2/3 |R(j)|, in integers
        members = torch.cat([own, cand.flatten(1)], dim=1)
        valid = torch.cat([own_mask, (cand_mask & accept[..., None]).flatten(1)], dim=1)
        members = torch.where(valid, members, n).sort(dim=1).values
        distinct = members != n
        distinct[:, 1:] &= members[:, 1:] != members[:, :-1]
        parts.append((members, distinct))
    width = max(int(d.sum(1).max()) for _, d in parts)
    members = torch.cat([_compact(m, d, width, n) for m, d in parts])
    return members, members != n


def _is_member(values: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """`values[r, a, b] in sets[r]` (rows of `sets` padded with a sentinel no value equals), by a
    binary search in each sorted row: O(log W) per value instead of a W-wide comparison."""
    ordered = sets.sort(dim=1).values
    flat = values.reshape(values.shape[0], -1)
    position = torch.searchsorted(ordered, flat).clamp_(max=ordered.shape[1] - 1)
    return (ordered.gather(1, position) == flat).view_as(values)


def _compact(members, distinct, width: int, sentinel: int):
    """Move the distinct entries of each row to the front; pad to `width` with `sentinel`."""
    key = torch.where(distinct, members, sentinel)
    return key.sort(dim=1).values[:, :width]


def _weights(source, row_min, scale, members, valid, storage_dtype):
    """Sparse V: exp(-orig) over each expanded set, each row normalised to sum 1."""
    rows = torch.arange(source.n, device=source.device)[:, None].expand_as(members)[valid]
    cols = members[valid]
    orig = (source.entries(rows, cols) - row_min[rows]) / scale[rows]
    weight = torch.exp(-orig)
    row_sum = torch.zeros(source.n, device=source.device).index_add_(0, rows, weight)
    return rows, cols, (weight / row_sum[rows]).to(storage_dtype)


def _query_expansion(rows, cols, values, ranks, k2: int, n: int):
    """V_qe[i] = mean of V over the k2 nearest neighbours of i (duplicates summed)."""
    v = SparseRows.from_coo(rows, cols, values, n)
    targets = torch.arange(n, device=rows.device).repeat_interleave(k2)
    owner, slot = expand_rows(v, ranks[:, :k2].reshape(-1))
    keys, inverse = torch.unique(targets[owner] * n + v.index[slot], return_inverse=True)
    summed = torch.zeros(keys.numel(), device=rows.device).index_add_(0, inverse, v.value[slot].float())
    return keys // n, keys % n, (summed / k2).to(values.dtype)


def _check_arguments(n, k1, k2, lambda_value, storage_dtype):
    check_positive_int(k1, "k1")
    check_positive_int(k2, "k2")
    if k1 + 1 > n or k2 > n:
        raise ValueError(
            f"re-ranking needs k1 + 1 <= N and k2 <= N, got k1={k1}, k2={k2} for N={n} samples; "
            "lower k1/k2 for small sets"
        )
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must lie in [0, 1], got {lambda_value}")
    if storage_dtype not in _STORAGE_DTYPES:
        raise ValueError(f"dtype must be torch.float32 or torch.float16, got {storage_dtype}")


def _source(dist, features):
    if (dist is None) == (features is None):
        raise ValueError("pass exactly one of dist (N x N distances) or features (N x D)")
    if dist is not None:
        return _MatrixSource(as_float_matrix(dist, "dist", square=True))
    feats = as_float_matrix(features, "features")
    check_no_nan(feats, "features")
    return _CosineSource(feats)


def rerank_blocks(
    dist=None,
    *,
    features=None,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    num_query: int | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield `(start, stop, block)`: rows `start:stop` of the re-ranked distance matrix.

    Same arguments as `rerank`. With `num_query=Q` the rows are the first Q samples (queries) and
    the block columns the remaining N - Q (gallery), as in query/gallery re-ranking for evaluation;
    the whole N-sample set still defines the neighbourhoods. Peak memory is one (rows x N) block
    plus O(N * k) for the neighbour sets, whatever N is.
    """
    source = _source(dist, features)
    n = source.n
    _check_arguments(n, k1, k2, lambda_value, dtype)
    rows_stop, col_start = (n, 0) if num_query is None else (int(num_query), int(num_query))
    if num_query is not None and not 0 < rows_stop < n:
        raise ValueError(f"num_query must lie in [1, N - 1] = [1, {n - 1}], got {num_query}")
    row_min, scale, by_row, by_col = _encode(source, k1, k2, dtype, chunk_size)
    for start, stop in _blocks(rows_stop, chunk_size):
        yield start, stop, _final_block(source, by_row, by_col, start, stop, row_min, scale,
                                        lambda_value)[:, col_start:].to(dtype)


def _encode(source, k1: int, k2: int, dtype, chunk_size):
    """Steps 1-4: row scaling and the sparse k-reciprocal encoding V (by row and by column)."""
    n = source.n
    row_min, scale, ranks = _scan(source, max(k1 + 1, k2), chunk_size)
    members, valid = _expanded_sets(ranks, k1)
    rows, cols, values = _weights(source, row_min, scale, members, valid, dtype)
    del members, valid
    if k2 != 1:
        rows, cols, values = _query_expansion(rows, cols, values, ranks, k2, n)
    return row_min, scale, SparseRows.from_coo(rows, cols, values, n), SparseRows.by_column(rows, cols, values, n)


def jaccard_within(features, *, max_distance: float, k1: int = 20, k2: int = 6,
                   dtype: torch.dtype = torch.float32, chunk_size: int | None = None):
    """Yield `(rows, cols, values)`: the k-reciprocal Jaccard distances `<= max_distance` (< 1).

    The entries of `rerank(features=..., lambda_value=0)` that are `<= max_distance`, with the
    same float32 values bit for bit, but without any (rows x N) block: a pair within a distance
    below 1 shares support in V, so only the pairs met in the sparse min-sum gather can qualify,
    each run of rows is thresholded while it is small, and the distance itself is computed (by
    the same operations as the dense path) only for the candidates. `chunk_size` is the row
    block of the distance scan, as in `rerank_blocks`.
    """
    if not 0.0 < float(max_distance) < 1.0:
        raise ValueError(f"max_distance must lie in (0, 1), got {max_distance}; for larger "
                         "distances every pair qualifies: use rerank_blocks")
    source = _source(None, features)
    n = source.n
    _check_arguments(n, k1, k2, 0.0, dtype)
    _, _, by_row, by_col = _encode(source, k1, k2, dtype, chunk_size)
    # jaccard(m) = 2 (1 - m) / (2 - m) decreases in m: jaccard <= d  <=>  m >= 2 (1 - d) / (2 - d).
    # Candidates are taken with a margin far above float32 rounding; the exact test follows.
    least_sum = 2.0 * (1.0 - max_distance) / (2.0 - max_distance) - 1e-3
    # The min-sums are symmetric bit for bit: sum the upper triangle only, mirror what is kept.
    upper = own_slots(by_row, by_col, n)
    for lo, _, block in min_sum_chunks(by_row, by_col, 0, n, n, from_slots=upper):
        r, c = torch.nonzero(block >= least_sum, as_tuple=True)
        distance = _jaccard_in_place(block[r, c]).to(dtype)
        keep = distance <= max_distance
        r, c, distance = r[keep] + lo, c[keep], distance[keep]
        off = r != c
        yield torch.cat([r, c[off]]), torch.cat([c, r[off]]), torch.cat([distance, distance[off]])


def _jaccard_in_place(m: torch.Tensor) -> torch.Tensor:
    """`jaccard = 1 - m / (2 - m) = 2 (1 - m) / (2 - m)`, clipped at 0, overwriting `m`."""
    denominator = 2.0 - m
    return m.neg_().add_(1.0).mul_(2.0).div_(denominator).clamp_min_(0.0)


def _final_block(source, by_row, by_col, start, stop, row_min, scale, lambda_value):
    """Rows start:stop of `(1 - lambda) * jaccard + lambda * orig`, computed in place."""
    out = _jaccard_in_place(min_sums(by_row, by_col, start, stop, source.n)).mul_(1.0 - lambda_value)
    if lambda_value == 0:
        # The pure Jaccard distance (ICE/SpCL clustering): D is not needed again, and recomputing
        # its rows from features is a full N x N x D matrix product.
        return out
    # + lambda * (D - min) / scale, without a temporary copy of the rows of D
    coefficient = lambda_value / scale[start:stop, None]
    out.addcmul_(source.rows(start, stop).float(), coefficient)
    return out.sub_(row_min[start:stop, None] * coefficient)


def rerank_condensed_(
    condensed: np.ndarray,
    diagonal: np.ndarray | None = None,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Re-rank a symmetric matrix given as a float32 condensed vector, writing the result into it.

    The input is the strict upper triangle (SciPy's condensed layout) of a symmetric distance
    matrix, with its diagonal (default 0). On return it holds the strict upper triangle of the
    re-ranked matrix `rerank(D)`, equal bit for bit to the dense result: that matrix is not
    symmetric, and its upper triangle is what `agglomerative` reads. No N x N buffer: memory
    beyond the vector is one block of rows plus the sparse encoding, as in `rerank_blocks`.

    Why in place is safe: output row i needs input row i, that is its own segment and the
    entries (j, i) of the segments of rows j < i. Blocks of rows are re-ranked from the last to
    the first, each computed in full before it is written, so when a block is written only the
    segments of its own rows and of rows after it change, and no row still to be computed reads
    those (steps 1-4, the neighbour sets and weights, read everything before any write).
    """
    if not isinstance(condensed, np.ndarray) or condensed.ndim != 1 or condensed.dtype != np.float32:
        raise ValueError("rerank_condensed_ needs a 1-D float32 NumPy condensed vector; convert "
                         "with np.asarray(..., dtype=np.float32) first")
    source = _CondensedSource(condensed, diagonal)
    _check_arguments(source.n, k1, k2, lambda_value, torch.float32)
    row_min, scale, by_row, by_col = _encode(source, k1, k2, torch.float32, chunk_size)
    for start, stop in reversed(list(_blocks(source.n, chunk_size))):
        block = _final_block(source, by_row, by_col, start, stop, row_min, scale, lambda_value)
        write_upper_rows(condensed, source.starts, start, block.numpy())
    return condensed


def _overwrite_target(dist, dtype, num_query) -> torch.Tensor:
    if dist is None or num_query is not None:
        raise ValueError("overwrite=True needs dist (not features) and a square result (no num_query)")
    target = as_float_matrix(dist, "dist", square=True)
    if target.dtype != dtype:
        raise ValueError(f"overwrite=True needs dist.dtype == dtype, got {target.dtype} and {dtype}")
    return target


def rerank(
    dist=None,
    *,
    features=None,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    num_query: int | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = None,
    overwrite: bool = False,
) -> torch.Tensor:
    """k-reciprocal re-ranked distances, on the device of the input.

    Args:
        dist: (N, N) all-vs-all distances (torch or NumPy); row i holds the distances from i.
        features: alternatively (N, D) features; cosine distances of their L2-normalised rows are
            computed block by block, so no N x N input is needed.
        k1, k2, lambda_value: the paper's parameters (defaults of IICS/IIDS: 20, 6, 0.3).
        num_query: return only the (Q, N - Q) query x gallery block (first Q rows are queries).
        dtype: storage of the sparse weights and of the result, torch.float32 or torch.float16
            (the reference stores float16); arithmetic is float32 throughout.
        chunk_size: rows per block (default: blocks of about 16 M elements).
        overwrite: write the result into `dist` itself (a tensor, or a NumPy array whose memory
            it shares) instead of a new N x N buffer; needs `dist.dtype == dtype` and no
            `num_query`. Safe because each output block depends only on its own rows of `dist`
            once the neighbour sets are built.

    Returns:
        (N, N) or (Q, N - Q) tensor. It is not symmetric in general (rows are scaled
        independently); `agglomerative` reads its upper triangle, as sklearn does.
    """
    blocks = rerank_blocks(
        dist, features=features, k1=k1, k2=k2, lambda_value=lambda_value,
        num_query=num_query, dtype=dtype, chunk_size=chunk_size,
    )
    out = _overwrite_target(dist, dtype, num_query) if overwrite else None
    for start, stop, block in blocks:
        if out is None:
            # Without num_query the output is square: its row count is the block's width.
            num_rows = block.shape[1] if num_query is None else int(num_query)
            out = torch.empty(num_rows, block.shape[1], dtype=dtype, device=block.device)
        out[start:stop] = block
    return out
