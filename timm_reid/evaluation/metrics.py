"""ReID retrieval metrics: mAP, CMC and mINP under the Market-1501 protocol, exact and chunked.

Protocol (Market-1501 / DukeMTMC / MSMT17): for each query, gallery images with the query's
identity **and** camera are removed; the remaining gallery images with the query's identity are
its matches; a query without any match is skipped and counted in `num_skipped_queries`.

Ranking order: ascending distance, ties broken by ascending gallery index - the order of a stable
argsort (`np.argsort(kind="stable")`), so results never depend on the sorting algorithm.
  * AP = mean over the matches of (matches up to and including it) / (its rank);
  * CMC[k] = fraction of valid queries whose first match is within the first k + 1;
  * INP = (number of matches) / (rank of the last match) (Ye et al., TPAMI 2021), mINP its mean.

How it stays fast and memory-bounded: only the matches and the non-matching gallery images
ranked at or before a query's farthest match influence any of the metrics. Each block of query
rows keeps just those entries (one comparison per distance) and sorts them; no Q x G argsort and
no Q x G matrix exist unless the caller passes one. With features, distances are computed block
by block on the features' device (CUDA included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cluster._checks import as_float_matrix, as_labels, check_no_nan, check_positive_int
from ..cluster.reranking import rerank_blocks

# Distances per block of query rows (float32: 32 MB); at most 1024 rows (see _KEY_ROW_BITS).
_BLOCK_ELEMENTS = 1 << 23
_MAX_BLOCK_ROWS = 1 << 10
_RANKS_REPORTED = (1, 5, 10)


class _GalleryIndex:
    """Gallery images grouped by identity, so each query's same-identity images are a slice."""

    def __init__(self, g_pids: torch.Tensor, g_camids: torch.Tensor):
        self.pids, self.camids = g_pids, g_camids
        self.order = torch.argsort(g_pids, stable=True)
        self.unique, self.counts = torch.unique_consecutive(g_pids[self.order], return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    def matches(self, q_pids: torch.Tensor, q_camids: torch.Tensor):
        """(query row, gallery index) of every match: same identity, other camera."""
        slot = torch.searchsorted(self.unique, q_pids).clamp_(max=self.unique.numel() - 1)
        lengths = torch.where(self.unique[slot] == q_pids, self.counts[slot], 0)
        rows = torch.repeat_interleave(torch.arange(q_pids.numel(), device=q_pids.device), lengths)
        within = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(lengths, 0) - lengths)[rows]
        gallery = self.order[self.starts[slot][rows] + within]
        other_camera = self.camids[gallery] != q_camids[rows]
        return rows[other_camera], gallery[other_camera]


# Exact composite keys (row, distance, gallery index) fit an int64 for float32 distances:
# 10 bits of block row, 32 of order-preserving distance bits, 21 of gallery index.
_KEY_ROW_BITS, _KEY_GALLERY_BITS = 10, 21


def _monotone_bits(dist: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 in [0, 2^32) with the same order (-0.0 first made +0.0, as it compares)."""
    bits = (dist.float() + 0.0).view(torch.int32).long()
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF) + (1 << 31)


def _ranks_by_key(rows, dist, gallery, is_match, num_matches, num_rows):
    """Sorted matches' (row, ordinal, rank) by binary search of each negative among the matches.

    With all keys distinct, a negative's insertion point among the sorted match keys is the
    number of matches before it; counted per row, these give every match's rank without
    sorting the negatives.
    """
    keys = (rows << (32 + _KEY_GALLERY_BITS)) | (_monotone_bits(dist) << _KEY_GALLERY_BITS) | gallery
    match_keys = keys[is_match].sort().values
    match_rows = match_keys >> (32 + _KEY_GALLERY_BITS)
    negative = ~is_match
    # Offsetting the insertion point by the row keeps each row's buckets disjoint.
    bucket = torch.searchsorted(match_keys, keys[negative]) + rows[negative]
    counts = torch.zeros(match_keys.numel() + num_rows + 1, dtype=torch.long, device=rows.device)
    counts[1:] = torch.cumsum(torch.bincount(bucket, minlength=match_keys.numel() + num_rows), 0)
    first = torch.cumsum(num_matches, 0) - num_matches
    position = torch.arange(match_keys.numel(), device=rows.device)
    negatives_before = counts[position + match_rows + 1] - counts[first[match_rows] + match_rows]
    hits = position - first[match_rows] + 1
    return match_rows, hits, hits + negatives_before


def _ranks_by_sort(rows, dist, gallery, is_match, num_matches, num_rows):
    """Same result for any dtype: stable sorts by gallery index, distance, then row."""
    order = torch.argsort(gallery, stable=True)
    order = order[torch.argsort(dist[order], stable=True)]
    order = order[torch.argsort(rows[order], stable=True)]
    rows, is_match = rows[order], is_match[order]
    entries_per_row = torch.bincount(rows, minlength=num_rows)
    position = torch.arange(rows.numel(), device=rows.device)
    rank = (position - (torch.cumsum(entries_per_row, 0) - entries_per_row)[rows] + 1)[is_match]
    match_rows = rows[is_match]
    hits = torch.cumsum(torch.ones_like(match_rows), 0)
    hits -= (torch.cumsum(num_matches, 0) - num_matches)[match_rows]
    return match_rows, hits, rank


class _Accumulator:
    """Float64 sums of AP and INP and the histogram of first-match ranks over valid queries."""

    def __init__(self, max_rank: int, device):
        self.length = max(max_rank, max(_RANKS_REPORTED))
        self.ap = torch.zeros((), dtype=torch.float64, device=device)
        self.inp = torch.zeros((), dtype=torch.float64, device=device)
        self.first_rank_counts = torch.zeros(self.length + 1, dtype=torch.float64, device=device)
        self.valid = 0
        self.skipped = 0

    def add_block(self, block, q_pids, q_camids, gallery: _GalleryIndex):
        num_rows = block.shape[0]
        match_rows, match_gallery = gallery.matches(q_pids, q_camids)
        num_matches = torch.bincount(match_rows, minlength=num_rows)
        valid = num_matches > 0
        self.valid += int(valid.sum())
        self.skipped += num_rows - int(valid.sum())
        if not bool(valid.any()):
            return
        farthest = torch.full((num_rows,), float("-inf"), dtype=block.dtype, device=block.device)
        farthest.scatter_reduce_(0, match_rows, block[match_rows, match_gallery], reduce="amax")
        # Entries after a query's farthest match cannot change its metrics: keep the others.
        rows, near = (block <= farthest[:, None]).nonzero(as_tuple=True)
        same_id = gallery.pids[near] == q_pids[rows]
        is_match = same_id & (gallery.camids[near] != q_camids[rows])
        keep = (is_match | ~same_id) & valid[rows]
        rows, near, is_match = rows[keep], near[keep], is_match[keep]
        exact_keys = (block.dtype in (torch.float32, torch.float16, torch.bfloat16)
                      and num_rows <= 1 << _KEY_ROW_BITS and gallery.pids.numel() <= 1 << _KEY_GALLERY_BITS)
        ranks = _ranks_by_key if exact_keys else _ranks_by_sort
        self._add_ranks(*ranks(rows, block[rows, near], near, is_match, num_matches, num_rows),
                        num_matches)

    def _add_ranks(self, match_rows, hits, rank, num_matches):
        """Accumulate AP, INP and first-match ranks from each match's (row, ordinal, rank)."""
        matches_of_row = num_matches[match_rows]
        self.ap += (hits.double() / rank.double() / matches_of_row.double()).sum()
        is_last = hits == matches_of_row
        self.inp += (matches_of_row[is_last].double() / rank[is_last].double()).sum()
        first_rank = rank[hits == 1].clamp(max=self.length + 1)
        self.first_rank_counts += torch.bincount(first_rank - 1, minlength=self.length + 1).double()

    def result(self, max_rank: int) -> dict:
        if self.valid == 0:
            raise ValueError(
                f"no valid query: none of the {self.skipped} queries has a gallery image of the "
                "same identity from another camera; check that q_pids/g_pids use the same ids"
            )
        cmc = (torch.cumsum(self.first_rank_counts[: self.length], 0) / self.valid).cpu()
        result = {"mAP": float(self.ap) / self.valid, "mINP": float(self.inp) / self.valid}
        result.update({f"rank{k}": float(cmc[k - 1]) for k in _RANKS_REPORTED})
        result["cmc"] = cmc[:max_rank].numpy()
        result["num_valid_queries"] = self.valid
        result["num_skipped_queries"] = self.skipped
        return result


def _distance_blocks(distmat, query_features, gallery_features, rerank, rerank_args, chunk_size):
    """Yield (start, stop, distances of query rows start:stop to the whole gallery)."""
    if distmat is not None:
        step = chunk_size or min(_MAX_BLOCK_ROWS, max(1, _BLOCK_ELEMENTS // distmat.shape[1]))
        for start in range(0, distmat.shape[0], step):
            block = distmat[start:start + step]
            yield start, start + block.shape[0], block
        return
    query = F.normalize(query_features.float(), dim=1)
    gallery = F.normalize(gallery_features.float(), dim=1)
    if rerank:
        yield from rerank_blocks(features=torch.cat([query, gallery]), num_query=query.shape[0],
                                 chunk_size=chunk_size, **rerank_args)
        return
    step = chunk_size or min(_MAX_BLOCK_ROWS, max(1, _BLOCK_ELEMENTS // gallery.shape[0]))
    for start in range(0, query.shape[0], step):
        stop = min(query.shape[0], start + step)
        yield start, stop, torch.mm(query[start:stop], gallery.t()).neg_().add_(1.0)


def _checked_inputs(distmat, query_features, gallery_features, rerank):
    if distmat is not None:
        if query_features is not None or gallery_features is not None:
            raise ValueError("pass either distmat or query_features/gallery_features, not both")
        if rerank:
            raise ValueError(
                "rerank=True needs query_features and gallery_features: re-ranking uses the "
                "query-query and gallery-gallery distances, which a query x gallery distmat lacks"
            )
        return as_float_matrix(distmat, "distmat"), None, None
    if query_features is None or gallery_features is None:
        raise ValueError("pass distmat (Q x G) or both query_features (Q x D) and gallery_features (G x D)")
    query = as_float_matrix(query_features, "query_features")
    gallery = as_float_matrix(gallery_features, "gallery_features", device=query.device)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query_features have dimension {query.shape[1]} but gallery_features "
                         f"{gallery.shape[1]}; extract both with the same model")
    check_no_nan(query, "query_features")
    check_no_nan(gallery, "gallery_features")
    return None, query, gallery


def evaluate(
    distmat=None,
    *,
    query_features=None,
    gallery_features=None,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int | None = None,
) -> dict:
    """mAP, CMC and mINP of a query x gallery retrieval (Market-1501 protocol, see module doc).

    Args:
        distmat: (Q, G) distances (torch or NumPy, any float dtype; smaller is more similar), or
        query_features, gallery_features: (Q, D), (G, D) features; cosine distances of their
            L2-normalised rows are computed block by block on their device.
        q_pids, g_pids, q_camids, g_camids: identities and cameras (integer, length Q or G).
        max_rank: length of the returned CMC curve.
        rerank: k-reciprocal re-ranking of the query + gallery set (needs features); k1, k2,
            lambda_value are its parameters.
        chunk_size: query rows per block (default: blocks of about 8 M distances).

    Returns:
        dict with "mAP", "mINP", "rank1", "rank5", "rank10" (floats in [0, 1]), "cmc"
        (NumPy float64 array of length max_rank), "num_valid_queries", "num_skipped_queries".
    """
    check_positive_int(max_rank, "max_rank")
    dist, query, gallery = _checked_inputs(distmat, query_features, gallery_features, rerank)
    num_query, num_gallery = (dist.shape if dist is not None else (query.shape[0], gallery.shape[0]))
    device = (dist if dist is not None else query).device
    q_pids = as_labels(q_pids, "q_pids", length=num_query, device=device)
    q_camids = as_labels(q_camids, "q_camids", length=num_query, device=device)
    g_pids = as_labels(g_pids, "g_pids", length=num_gallery, device=device)
    g_camids = as_labels(g_camids, "g_camids", length=num_gallery, device=device)
    index = _GalleryIndex(g_pids, g_camids)
    totals = _Accumulator(max_rank, device)
    rerank_args = {"k1": k1, "k2": k2, "lambda_value": lambda_value}
    for start, stop, block in _distance_blocks(dist, query, gallery, rerank, rerank_args, chunk_size):
        check_no_nan(block, "distances", start)
        totals.add_block(block, q_pids[start:stop], q_camids[start:stop], index)
    return totals.result(max_rank)


def same_camera_top1(query_features, gallery_features, q_pids, g_pids, q_camids, g_camids):
    """Share of queries whose top-1 gallery match comes from the query's own camera.

    Gallery entries with the query's identity *and* camera are excluded first (the evaluation
    protocol), so a high share means the features retrieve by camera rather than by person.
    Features are expected L2-normalised; the distance is cosine.
    """
    q = torch.as_tensor(query_features, dtype=torch.float32)
    g = torch.as_tensor(gallery_features, dtype=torch.float32)
    q_pids, g_pids = torch.as_tensor(q_pids), torch.as_tensor(g_pids)
    q_camids, g_camids = torch.as_tensor(q_camids), torch.as_tensor(g_camids)
    same_cam_hits = 0
    for start in range(0, len(q), 1024):
        sim = q[start:start + 1024] @ g.t()
        qp, qc = q_pids[start:start + 1024, None], q_camids[start:start + 1024, None]
        junk = (g_pids[None, :] == qp) & (g_camids[None, :] == qc)
        sim = sim.masked_fill(junk, float("-inf"))
        top = sim.argmax(1)
        same_cam_hits += int((g_camids[top] == qc[:, 0]).sum())
    return same_cam_hits / max(len(q), 1)
