"""Average linkage by the nearest-neighbour chain, in place on a condensed vector (float32 or 64).

SciPy's `linkage(method="average")` copies its input to a float64 working vector: at MSMT17 size
(N = 32,621) that is 4.3 GB on top of the caller's condensed matrix. This version updates the
caller's own vector, whatever its float dtype, so a float32 matrix (2.1 GB) is the only quadratic
buffer.

The algorithm (Murtagh 1983; Muellner 2011, "Modern hierarchical, agglomerative clustering
algorithms"): grow a chain of nearest neighbours from an active cluster until two clusters are
each other's nearest neighbour, merge them, and continue from what is left of the chain. Average
linkage is reducible, so the chain stays valid after a merge and the merges found are those of
the greedy algorithm. The merged cluster takes the larger index of the two and its distances
follow Lance-Williams: `d(a + b, k) = (n_a d(a, k) + n_b d(b, k)) / (n_a + n_b)`.

Each step is one row read or written, vectorised: the row's own segment is a slice, its column
part a gather (`_condensed.read_row`). Rows are read into float64 buffers, so each update is one
float64 formula (the same operations as SciPy's, in the same order) rounded once to the storage
dtype.

What is guaranteed:
- float64 input: the merges, their order after sorting, their heights and sizes equal SciPy's
  bit for bit (same arithmetic, same tie rule: the first smallest index, the chain's previous
  element kept on equality, the chain restarted at the first active cluster).
- float32 input: every stored linkage distance is rounded to float32 after each update (relative
  error up to 2^-24 per update it went through), so the merges equal SciPy's on the same values
  (in float64) only when no two competing linkage distances are that close; near-ties can flip.
"""

from __future__ import annotations

import numpy as np

from ._condensed import column_bases, read_row, segment_starts, write_row


def _nearest(row: np.ndarray, alive: np.ndarray, x: int, previous: int | None) -> int:
    """Index of the smallest `row` entry among active clusters other than x: the first one,
    except that the chain's previous element wins an equality (so the chain cannot cycle)."""
    y = int(np.argmin(row))
    if previous is not None and row[previous] <= row[y]:
        return previous
    if row[y] == np.inf and not (alive[y] and y != x):
        # Only infinite distances remain: `row` cannot tell the dead (masked to inf) apart.
        candidates = np.flatnonzero(alive)
        y = int(candidates[candidates != x][0])
    return y


def _masked_row(condensed, starts, bases, x: int, dead: np.ndarray, out: np.ndarray):
    """Row x in float64 with the merged-away clusters and x itself at +inf."""
    read_row(condensed, starts, bases, x, out)
    out += dead  # 0 for active clusters, inf for merged-away ones
    out[x] = np.inf
    return out


def nn_chain_average(condensed: np.ndarray, n: int) -> np.ndarray:
    """SciPy-style linkage matrix (n - 1, 4) of average linkage; overwrites `condensed`.

    Rows `[a, b, height, size]` sorted by height (stable), cluster ids as SciPy's: leaves 0..n-1,
    the k-th merge creates id n + k, a < b. `condensed` must hold no NaN (checked by callers).
    """
    starts = segment_starts(n)
    bases = column_bases(starts)
    size = np.ones(n, dtype=np.float64)
    dead = np.zeros(n, dtype=np.float64)  # +inf once a cluster is merged away: masks its entries
    alive = np.ones(n, dtype=bool)
    merges = np.empty((n - 1, 4), dtype=np.float64)
    chain: list[int] = []
    # rows[t]: the masked row of chain[t], or None when a merge happened since it was read (rows
    # are read again only when needed: the top one for its search, the one below for a merge).
    rows: list[np.ndarray | None] = []

    def row_of(t: int) -> np.ndarray:
        if rows[t] is None:
            rows[t] = _masked_row(condensed, starts, bases, chain[t], dead, np.empty(n))
        return rows[t]

    for k in range(n - 1):
        if not chain:
            chain.append(int(np.argmax(alive)))
            rows.append(None)
        while True:
            x = chain[-1]
            previous = chain[-2] if len(chain) > 1 else None
            y = _nearest(row_of(-1), alive, x, previous)
            if y == previous:
                break
            chain.append(y)
            rows.append(None)
        height = float(row_of(-1)[y])
        row_x, row_y = row_of(-1), row_of(-2)
        del chain[-2:], rows[-2:]
        a, b = min(x, y), max(x, y)
        row_a, row_b = (row_x, row_y) if x < y else (row_y, row_x)
        _merge(condensed, starts, bases, a, b, row_a, row_b, size, dead, alive)
        merges[k] = (a, b, height, size[b])
        rows = [None] * len(chain)
    return _sorted_and_labelled(merges, n)


def _merge(condensed, starts, bases, a: int, b: int, row_a, row_b, size, dead, alive) -> None:
    """Merge cluster a into b (a < b): row b gets the Lance-Williams average, a is retired."""
    n_a, n_b = size[a], size[b]
    # Same operations as SciPy's average rule, in float64: (n_a d_a + n_b d_b) / (n_a + n_b).
    # Entries of retired clusters come out inf (masked rows) and stay masked on every read.
    write_row(condensed, starts, bases, b, (n_a * row_a + n_b * row_b) / (n_a + n_b))
    size[b] = n_a + n_b
    size[a] = 0
    dead[a] = np.inf
    alive[a] = False


def _sorted_and_labelled(merges: np.ndarray, n: int) -> np.ndarray:
    """Sort merges by height (stable) and name clusters as SciPy does: merge k creates n + k,
    each merge names the clusters holding its two representatives, smaller id first."""
    merges = merges[np.argsort(merges[:, 2], kind="mergesort")]
    parent = np.arange(2 * n - 1)

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving
            node = parent[node]
        return node

    for k in range(n - 1):
        a, b = root(int(merges[k, 0])), root(int(merges[k, 1]))
        parent[a] = parent[b] = n + k
        merges[k, 0], merges[k, 1] = min(a, b), max(a, b)
    return merges
