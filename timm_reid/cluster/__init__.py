"""Pseudo-label clustering for unsupervised ReID: re-ranking, agglomerative clustering, the
IICS intra-/inter-camera steps with the cross-camera weighted Jaccard term, DBSCAN on the
k-reciprocal Jaccard graph (ICE), and GUR's association embedding and cross-modality labels.

Everything accepts torch tensors or NumPy arrays and keeps memory to the output plus O(N * k)
(see each module's docstring for the exact accounting).
"""

from .auto import EpsChoice, dbscan_auto, estimate_camera_cluster_counts, estimate_num_clusters
from .agglomerative import agglomerative, drop_singleton_clusters, quantile_threshold
from .association import association_embedding, unify_labels
from .camera import IntraCameraClusters, cluster_inter_camera, cluster_intra_camera
from .dbscan import dbscan_jaccard, jaccard_graph
from .cross_camera import cross_camera_distance, weighted_jaccard
from .reranking import rerank, rerank_blocks

__all__ = [
    "EpsChoice",
    "IntraCameraClusters",
    "agglomerative",
    "association_embedding",
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
    "unify_labels",
    "weighted_jaccard",
]
