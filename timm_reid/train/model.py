"""The trained network: a timm backbone giving pooled features, plus BN-neck classifier heads.

As in the IICS/IIDS reference (``ft_net_intra`` / ``ft_net_inter``), each head is a BN-neck
(BatchNorm1d, bias frozen at 0) followed by a bias-free Linear with N(0, 0.001) weights. The intra
stage has one head per camera (sized by that camera's cluster count, each with its own BN-neck); the
inter stage has one head. Heads are rebuilt fresh before every stage; the backbone carries over.
Retrieval and clustering use the pooled backbone feature, as the reference does.
"""

import torch
import torch.nn.functional as F
from torch import nn

from timm_reid.layers import TNorm


class Head(nn.Sequential):
    """BN-neck (bias frozen) + bias-free Linear classifier, initialised as the reference."""

    def __init__(self, in_features, num_classes):
        super().__init__(nn.BatchNorm1d(in_features), nn.Linear(in_features, num_classes, bias=False))
        nn.init.ones_(self[0].weight)
        nn.init.zeros_(self[0].bias)
        self[0].bias.requires_grad_(False)
        nn.init.normal_(self[1].weight, std=0.001)

    @torch.no_grad()
    def init_from_centroids(self, features, labels, temperature):
        """Start as a cosine classifier over the clusters' mean features: the BN-neck's running
        statistics become those of ``features`` and class ``k``'s weight is the direction of cluster
        ``k``'s mean standardised feature, scaled so that logits are about ``cos / temperature``.

        A fresh N(0, 0.001) classifier needs many steps before its cross-entropy carries signal; the
        heads are rebuilt every stage, so on short schedules they never do.
        """
        bn, fc = self[0], self[1]
        x = torch.as_tensor(features, dtype=torch.float32, device=fc.weight.device)
        labels = torch.as_tensor(labels, dtype=torch.long, device=x.device)
        mean, var = x.mean(0), x.var(0, unbiased=False)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        z = (x - mean) / torch.sqrt(var + bn.eps)
        sums = torch.zeros(fc.out_features, z.shape[1], device=x.device).index_add_(0, labels, z)
        fc.weight.copy_(F.normalize(sums, dim=1) / (temperature * z.norm(dim=1).mean()))


class ReIDNet(nn.Module):
    """Backbone (a ``num_classes=0`` model from :func:`timm_reid.factory.create_model`) + heads.

    ``forward(x, camids=None, convert=False, targets=None)`` returns the pooled feature (the
    retrieval and clustering feature, as in the reference); the camera keywords go to the
    backbone's TNorm layers through the forward pre-hook that ``create_model`` installs (also on an
    unpatched baseline, which ignores them).
    """

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.num_features = backbone.num_features
        self.has_tnorm = any(isinstance(m, TNorm) for m in backbone.modules())
        self.heads = nn.ModuleList()

    def set_heads(self, sizes):
        """Replace the heads by fresh ones with ``sizes[i]`` classes each (at least 1)."""
        device = next(self.backbone.parameters()).device
        self.heads = nn.ModuleList(Head(self.num_features, max(int(n), 1)) for n in sizes).to(device)

    def head_sizes(self):
        return [h[1].out_features for h in self.heads]

    def forward(self, x, camids=None, convert=False, targets=None):
        if convert and not self.has_tnorm:
            raise ValueError("convert=True needs TNorm layers in the backbone (build it with --tnorm STAGE ...)")
        if camids is None and not convert:
            return self.backbone(x)
        return self.backbone(x, camids=camids, convert=convert, targets=targets)


def param_groups(net, *, lr, backbone_lr_mult, weight_decay):
    """Backbone at ``lr * backbone_lr_mult``, heads at ``lr`` (reference ``make_params``)."""
    backbone = [p for p in net.backbone.parameters() if p.requires_grad]
    heads = [p for p in net.heads.parameters() if p.requires_grad]
    return [
        {"params": backbone, "lr": lr * backbone_lr_mult, "weight_decay": weight_decay},
        {"params": heads, "lr": lr, "weight_decay": weight_decay},
    ]


def build_optimizer(net, *, opt, lr, backbone_lr_mult, weight_decay, momentum):
    groups = param_groups(net, lr=lr, backbone_lr_mult=backbone_lr_mult, weight_decay=weight_decay)
    if opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if opt == "adam":  # L2 weight decay added to the gradient (ICE reference)
        return torch.optim.Adam(groups, lr=lr)
    if opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"Invalid optimizer {opt!r}. Only 'sgd', 'adam' and 'adamw' are supported.")
