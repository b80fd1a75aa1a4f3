"""Pseudo-label clustering for unsupervised ReID: re-ranking, agglomerative clustering, and the
IICS intra-/inter-camera steps with the cross-camera weighted Jaccard term.

Everything accepts torch tensors or NumPy arrays and keeps memory to the output plus O(N * k)
(see each module's docstring for the exact accounting).
"""

from .auto import EpsChoice, dbscan_auto, estimate_camera_cluster_counts, estimate_num_clusters
from .agglomerative import agglomerative, drop_singleton_clusters, quantile_threshold
from .camera import IntraCameraClusters, cluster_inter_camera, cluster_intra_camera
from .dbscan import dbscan_jaccard, jaccard_graph
from .cross_camera import cross_camera_distance, weighted_jaccard
from .reranking import rerank, rerank_blocks

__all__ = [
    "EpsChoice",
    "IntraCameraClusters",
    "agglomerative",
    "cluster_inter_camera",
    "cluster_intra_camera",
    "cross_camera_distance",
    "dbscan_auto",
    "dbscan_jaccard",
    "drop_singleton_clusters",
    "estimate_camera_cluster_counts",
    "estimate_num_clusters",
    "jaccard_graph",
    "quantile_threshold",
    "rerank",
    "rerank_blocks",
    "weighted_jaccard",
]
