"""Plots of a run: training curves, CMC curves, and a 2-D embedding of test features coloured by
camera and marked by identity (as Figure 1 of the IICS paper)."""

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend is selected on import

MARKERS = "os^vD<>pP*Xh"


def plot_curves(history, initial, path):
    """Per round: losses, pseudo-label quality (ARI) and counts, test mAP / rank-1 when evaluated."""
    rounds = [h["round"] for h in history]
    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    for key in ("intra_loss", "inter_ce_loss", "inter_triplet_loss"):
        pts = [(h["round"], h[key]) for h in history if h.get(key) is not None]
        if pts:
            axes[0].plot(*zip(*pts), marker=".", label=key)
    axes[0].set(title="losses", xlabel="round")
    for key in ("intra_ari", "inter_ari", "inter_nmi", "inter_purity"):
        pts = [(h["round"], h[key]) for h in history if key in h]
        if pts:
            axes[1].plot(*zip(*pts), marker=".", label=key)
    axes[1].set(title="pseudo-label quality", xlabel="round", ylim=(0, 1))
    evals = [(0, initial.get("test", {}))] + [(h["round"], h["test"]) for h in history if "test" in h]
    for key in ("mAP", "rank1", "same_camera_top1"):
        pts = [(r, m[key]) for r, m in evals if key in m]
        if pts:
            axes[2].plot(*zip(*pts), marker="o", label=key)
    axes[2].set(title="test (diagnostic only)", xlabel="round", ylim=(0, 1))
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if rounds:
        axes[0].set_xlim(0.5, max(rounds) + 0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_cmc(cmc_initial, cmc_final, path, max_rank=20):
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for name, cmc in (("initial", cmc_initial), ("final", cmc_final)):
        if cmc is not None:
            cmc = np.asarray(cmc)[:max_rank]
            ax.plot(np.arange(1, len(cmc) + 1), cmc, marker=".", label=name)
    ax.set(title="CMC (test)", xlabel="rank", ylabel="matching rate", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def embed_2d(features):
    """2-D PCA projection (t-SNE, as in the paper's figure, took minutes on a loaded CPU)."""
    centred = features - features.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, "PCA"


def plot_embedding(features, pids, camids, path, num_identities=12, seed=0):
    """Test images of ``num_identities`` identities seen by several cameras: colour = camera,
    marker = identity. Camera-biased features form camera-coloured islands."""
    rng = np.random.default_rng(seed)
    ids = [p for p in np.unique(pids) if p >= 0 and len(np.unique(camids[pids == p])) > 1]
    if len(ids) < 2:
        return
    ids = rng.choice(ids, size=min(num_identities, len(ids)), replace=False)
    keep = np.isin(pids, ids)
    xy, method = embed_2d(features[keep])
    p, c = pids[keep], camids[keep]
    cmap = matplotlib.colormaps["tab10"]
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    for i, pid in enumerate(ids):
        m = p == pid
        ax.scatter(xy[m, 0], xy[m, 1], c=[cmap(int(k) % 10) for k in c[m]], marker=MARKERS[i % len(MARKERS)],
                   s=40, edgecolors="k", linewidths=0.3)
    for cam in np.unique(c):
        ax.scatter([], [], c=[cmap(int(cam) % 10)], label=f"camera {cam}")
    ax.legend(fontsize=8, loc="best")
    ax.set(title=f"test features ({method}): colour = camera, marker = identity", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
