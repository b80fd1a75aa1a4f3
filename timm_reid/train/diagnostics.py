"""Per-round diagnostics: pseudo-label statistics and quality, camera bias of retrieval.

Pseudo-label quality needs ground truth and is only reported, never used for training or model
selection. NMI (arithmetic mean normalisation), ARI and purity are computed from the contingency
table with numpy, so scikit-learn is not needed at run time.
"""

import numpy as np

from timm_reid.evaluation.metrics import same_camera_top1  # noqa: F401 (a diagnostic of the runs too)


def _contingency(labels_true, labels_pred):
    _, t = np.unique(labels_true, return_inverse=True)
    _, p = np.unique(labels_pred, return_inverse=True)
    table = np.zeros((t.max() + 1, p.max() + 1), dtype=np.int64)
    np.add.at(table, (t, p), 1)
    return table


def _entropy(counts):
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def cluster_quality(labels_true, labels_pred):
    """``{"nmi", "ari", "purity"}`` of predicted labels against true ones (samples with true -1 skipped)."""
    labels_true = np.asarray(labels_true)
    labels_pred = np.asarray(labels_pred)
    keep = labels_true >= 0
    if keep.sum() < 2:
        return {}
    table = _contingency(labels_true[keep], labels_pred[keep])
    n = table.sum()
    rows, cols = table.sum(1), table.sum(0)
    pij = table[table > 0] / n
    outer = (rows[:, None] * cols[None, :])[table > 0] / n**2
    mi = float((pij * np.log(pij / outer)).sum())
    h_t, h_p = _entropy(rows), _entropy(cols)
    nmi = 1.0 if h_t + h_p == 0 else 2 * mi / (h_t + h_p)

    def pairs(x):
        return (x * (x - 1) / 2).sum()

    index, a, b, total = pairs(table), pairs(rows), pairs(cols), n * (n - 1) / 2
    expected = a * b / total
    ari = 1.0 if (a + b) / 2 == expected else float((index - expected) / ((a + b) / 2 - expected))
    purity = float(table.max(0).sum() / n)
    return {"nmi": float(nmi), "ari": ari, "purity": purity}


def label_stats(labels, camids=None):
    """Cluster count, singleton count, largest cluster, and (if cameras given) the share of
    clusters that span more than one camera. Labels -1 (dropped samples) are ignored."""
    labels = np.asarray(labels)
    keep = labels >= 0
    _, counts = np.unique(labels[keep], return_counts=True)
    stats = {
        "clusters": int(len(counts)),
        "singletons": int((counts == 1).sum()),
        "largest": int(counts.max()) if len(counts) else 0,
        "labelled": int(keep.sum()),
    }
    if camids is not None and len(counts):
        camids = np.asarray(camids)[keep]
        pairs = np.unique(np.stack([labels[keep], camids], 1), axis=0)
        _, cams_per_cluster = np.unique(pairs[:, 0], return_counts=True)
        stats["multi_camera_share"] = float((cams_per_cluster > 1).mean())
    return stats
