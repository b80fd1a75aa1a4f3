"""Write ``notebooks/recipes.ipynb`` from the cells below (the notebook is generated, edit here).

    python notebooks/build_recipes.py                   # write the notebook without outputs
    python notebooks/build_recipes.py --execute --tiny  # ... executed at tiny settings (as stored)
    python notebooks/build_recipes.py --execute         # ... executed at full settings (minutes)

The test suite (``tests/test_notebook.py``) executes it with ``TIMM_REID_RECIPES_TINY=1``.
"""
import os

import _build

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "recipes.ipynb")

CELLS = [
    ("md", """# Recipes: timm-reid inside torchreid, fast-reid, and a DBSCAN loop

Three short recipes for code you do not own:

1. a **torchreid engine** whose model is called as `model(imgs)`: a three-line subclass passes
   `data["camid"]` to the TNorm layers through `with timm_reid.cameras(...)`;
2. the **fast-reid** equivalent: a subclass of the meta-architecture wraps its `forward(batched_inputs)`
   the same way (`batched_inputs["camids"]`);
3. the cluster-contrast-style loop of `notebooks/embed.ipynb` with **scikit-learn's DBSCAN** on
   re-ranked distances, as cluster-contrast clusters.

torchreid and fast-reid are not dependencies of timm-reid, so this notebook does not import them:
each recipe runs against a **small stand-in base class** that does what the library's class does
at the point that matters (torchreid's `ImageSoftmaxEngine.forward_backward` calls `self.model(imgs)`
with no camera ids; fast-reid's `Baseline.forward(batched_inputs)` reads `batched_inputs["images"]`).
With the real library, drop the stand-in and subclass the real class: the subclass is the same.
With `TIMM_REID_RECIPES_TINY=1` (the test suite) everything is so small that the numbers mean nothing."""),
    ("code", """import os
import tempfile
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # before tqdm.auto is imported: no ipywidgets

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import timm_reid
from timm_reid.data import ImageDataset, RandomIdentitySampler, build_dataset, build_transforms, read_image

TINY = os.environ.get("TIMM_REID_RECIPES_TINY", "0") == "1"
WORK = os.environ.get("TIMM_REID_RECIPES_DIR") or tempfile.mkdtemp(prefix="timm_reid_recipes_")
NUM_CAMERAS, H, W = 4, 64, 32
if TINY:  # seconds, for the test suite
    MODEL, IDENTITIES, TEST_IDENTITIES, STEPS, CLUSTER_ROUNDS = "resnet10t", 8, 6, 2, 1
else:
    MODEL, IDENTITIES, TEST_IDENTITIES, STEPS, CLUSTER_ROUNDS = "resnet18", 100, 60, 300, 4
torch.manual_seed(0)
torch.set_num_threads(min(2, os.cpu_count() or 1))

dataset = build_dataset("synthetic", os.path.join(WORK, "data"), seed=0, num_identities=IDENTITIES,
                        num_test_identities=TEST_IDENTITIES, num_cameras=NUM_CAMERAS, image_size=(H, W))
train_tf, test_tf = build_transforms(H, W, train=True, pad=4), build_transforms(H, W, train=False)
print(dataset.summary())
print(f"tiny={TINY}")


def make_backbone():
    return timm_reid.create_model(MODEL, aibn=[3, 4], tnorm=[1, 2, 3], num_cameras=NUM_CAMERAS, num_classes=0)


def tnorm_rows_recorded(backbone):
    \"\"\"Cameras whose TNorm running statistics moved away from their init (0 mean, 1 variance).\"\"\"
    tnorm = next(m for m in backbone.modules() if isinstance(m, timm_reid.TNorm))
    return int((tnorm.running_mean.abs().sum(1) > 0).sum())"""),
    ("md", """## 1. A torchreid engine

torchreid's datasets yield `{"img", "pid", "camid", "impath"}` and its engines call the model as
`self.model(imgs)`: no camera ids reach the backbone, and a TNorm in training refuses to run without
them (it would record nothing and later convert with untrained statistics). The recipe is a
subclass that opens a `timm_reid.cameras` block around each step; everything the step runs in this
thread (the forward, and the backward) sees the batch's camera ids:

```python
class CameraAwareEngine(torchreid.engine.ImageSoftmaxEngine):
    def forward_backward(self, data):
        with timm_reid.cameras(data["camid"]):
            return super().forward_backward(data)
```

The stand-in below copies what `ImageSoftmaxEngine.forward_backward` does (parse the batch, forward,
cross-entropy, step) and nothing else."""),
    ("code", """class ImageSoftmaxEngine:
    \"\"\"Stand-in for torchreid.engine.ImageSoftmaxEngine (forward_backward and a bare training loop).\"\"\"

    def __init__(self, loader, model, optimizer):
        self.loader, self.model, self.optimizer = loader, model, optimizer

    def parse_data_for_train(self, data):
        return data["img"], data["pid"]

    def forward_backward(self, data):
        imgs, pids = self.parse_data_for_train(data)
        outputs = self.model(imgs)                      # no camera ids: torchreid does not know them
        loss = F.cross_entropy(outputs, pids)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def train(self, steps):
        self.model.train()
        for step, data in enumerate(self.loader):
            summary = self.forward_backward(data)
            if step + 1 == steps:
                return summary


class CameraAwareEngine(ImageSoftmaxEngine):     # the recipe: the same three lines on torchreid's class
    def forward_backward(self, data):
        with timm_reid.cameras(data["camid"]):
            return super().forward_backward(data)


class DictImages(torch.utils.data.Dataset):
    \"\"\"What torchreid's ImageDataset yields: {"img", "pid", "camid", "impath"}.\"\"\"

    def __init__(self, records, transform):
        self.records, self.transform = list(records), transform

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        path, pid, camid = self.records[i]
        return {"img": self.transform(read_image(path)), "pid": pid, "camid": camid, "impath": path}


class Classifier(nn.Module):
    \"\"\"A torchreid-style model: logits in training, features in eval; forward(x) only.\"\"\"

    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone, self.fc = backbone, nn.Linear(backbone.num_features, num_classes)

    def forward(self, x):
        features = self.backbone(x)
        return self.fc(features) if self.training else features


sampler = RandomIdentitySampler([r.pid for r in dataset.train], num_instances=4, batch_size=16)
loader = torch.utils.data.DataLoader(DictImages(dataset.train, train_tf), batch_size=16, sampler=sampler)
model = Classifier(make_backbone(), dataset.num_train_pids)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
try:
    ImageSoftmaxEngine(loader, model, optimizer).train(STEPS)
except ValueError as error:
    print("plain engine refused:", str(error).split(":")[1].strip()[:90], "...")
summary = CameraAwareEngine(loader, model, optimizer).train(STEPS)
print(f"camera-aware engine: {STEPS} steps, loss {summary['loss']:.3f}, "
      f"TNorm statistics recorded for {tnorm_rows_recorded(model.backbone)} of {NUM_CAMERAS} cameras")"""),
    ("md", """## 2. fast-reid

fast-reid's trainer calls the meta-architecture with the whole batch dict, `model(batched_inputs)`,
whose `"camids"` entry holds the camera ids; its backbone sees only the images. The recipe wraps
the meta-architecture's forward (registered under a new name in a real fast-reid config,
`META_ARCHITECTURE: CameraAwareBaseline`, with the patched timm model as its backbone):

```python
@META_ARCH_REGISTRY.register()
class CameraAwareBaseline(fastreid.modeling.meta_arch.Baseline):
    def forward(self, batched_inputs):
        with timm_reid.cameras(batched_inputs["camids"]):
            return super().forward(batched_inputs)
```

The stand-in copies what `Baseline.forward` does with the batch (images to the backbone, a loss
dict in training, features in eval) and the trainer's `run_step`."""),
    ("code", """class Baseline(nn.Module):
    \"\"\"Stand-in for fastreid.modeling.meta_arch.Baseline: forward(batched_inputs).\"\"\"

    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone, self.heads = backbone, nn.Linear(backbone.num_features, num_classes)

    def forward(self, batched_inputs):
        features = self.backbone(batched_inputs["images"])
        if not self.training:
            return features
        return {"loss_cls": F.cross_entropy(self.heads(features), batched_inputs["targets"])}


class CameraAwareBaseline(Baseline):             # the recipe: the same three lines on fast-reid's class
    def forward(self, batched_inputs):
        with timm_reid.cameras(batched_inputs["camids"]):
            return super().forward(batched_inputs)


def run_step(model, optimizer, data):
    \"\"\"What fast-reid's SimpleTrainer.run_step does with one batch.\"\"\"
    loss_dict = model(data)
    losses = sum(loss_dict.values())
    optimizer.zero_grad()
    losses.backward()
    optimizer.step()
    return losses.item()


def fastreid_batches(loader):
    \"\"\"fast-reid's batch keys: images, targets, camids, img_paths.\"\"\"
    for images, pids, camids, _ in loader:
        yield {"images": images, "targets": pids, "camids": camids, "img_paths": None}


meta = CameraAwareBaseline(make_backbone(), dataset.num_train_pids).train()
optimizer = torch.optim.AdamW(meta.parameters(), lr=3e-4)
plain = torch.utils.data.DataLoader(ImageDataset(dataset.train, train_tf), batch_size=16, sampler=sampler)
for step, data in enumerate(fastreid_batches(plain)):
    loss = run_step(meta, optimizer, data)
    if step + 1 == STEPS:
        break
meta.eval()
with torch.no_grad():
    features = meta({"images": torch.randn(2, 3, H, W), "camids": torch.tensor([0, 1])})
print(f"fast-reid style: {STEPS} steps, loss {loss:.3f}, eval features {tuple(features.shape)}, "
      f"TNorm statistics recorded for {tnorm_rows_recorded(meta.backbone)} of {NUM_CAMERAS} cameras")"""),
    ("md", """## 3. The cluster-contrast loop with DBSCAN

`notebooks/embed.ipynb` clusters with average linkage to stay within timm-reid's own functions;
cluster-contrast (and ICE) cluster with DBSCAN on the k-reciprocal re-ranked distance. scikit-learn
(a timm-reid dependency) runs it on the precomputed matrix. DBSCAN's `eps` is a distance: on
Market-1501 cluster-contrast uses 0.6; on data of another size pick it from the distances, here the
median distance of each image to its `min_samples`-th neighbour (the usual k-distance heuristic), so
that about half the images are core points. Label -1 (noise) is left out of the round, as
cluster-contrast does; `timm_reid.cluster.dbscan_jaccard` gives the same partition from the sparse
Jaccard graph without the dense matrix (`python -m timm_reid.train --method ice` uses it)."""),
    ("code", """from sklearn.cluster import DBSCAN

from timm_reid.cluster import rerank
from timm_reid.data import relabel
from timm_reid.evaluation import evaluate


class ClusterMemory(nn.Module):
    \"\"\"One L2-normalised centroid per pseudo identity; InfoNCE against all of them.\"\"\"

    def __init__(self, centroids, temperature=0.05, momentum=0.2):
        super().__init__()
        self.register_buffer("features", F.normalize(centroids, dim=1))
        self.temperature, self.momentum = temperature, momentum

    def forward(self, features, labels):
        return F.cross_entropy(F.normalize(features, dim=1) @ self.features.t() / self.temperature, labels)

    @torch.no_grad()
    def update(self, features, labels):
        for f, y in zip(F.normalize(features, dim=1), labels):
            self.features[y] = F.normalize(self.momentum * self.features[y] + (1 - self.momentum) * f, dim=0)


MIN_SAMPLES = 4
backbone = make_backbone()
optimizer = torch.optim.AdamW(backbone.parameters(), lr=3e-4, weight_decay=5e-4)
eval_loader = torch.utils.data.DataLoader(ImageDataset(dataset.train, test_tf), batch_size=64)
for round_index in range(CLUSTER_ROUNDS):
    feats, _, _ = timm_reid.extract_features(backbone, eval_loader, progress=False)
    dist = np.asarray(rerank(features=feats, k1=6, k2=3), dtype=np.float64)
    eps = float(np.median(np.sort(dist, axis=1)[:, MIN_SAMPLES]))
    labels = DBSCAN(eps=eps, min_samples=MIN_SAMPLES, metric="precomputed").fit_predict(dist)
    clusters, noise = int(labels.max()) + 1, int((labels < 0).sum())
    centroids = torch.stack([feats[torch.as_tensor(labels == k)].mean(0) for k in range(clusters)])
    memory = ClusterMemory(centroids)
    pseudo = relabel(dataset.train, labels)                       # noise (-1) left out
    round_sampler = RandomIdentitySampler([r.pid for r in pseudo], num_instances=4, batch_size=16, seed=round_index)
    loader = torch.utils.data.DataLoader(ImageDataset(pseudo, train_tf), batch_size=16, sampler=round_sampler)
    backbone.train()
    for step, (images, targets, camids, _) in enumerate(loader):
        features = backbone(images, camids=camids)
        loss = memory(features, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        memory.update(features.detach(), targets)
        if step + 1 == STEPS:
            break
    print(f"round {round_index + 1}: DBSCAN eps {eps:.3f}: {clusters} clusters, {noise} noise images, "
          f"loss {loss.item():.3f}")

test = dataset.query + dataset.gallery
feats, pids, camids = timm_reid.extract_features(backbone, torch.utils.data.DataLoader(
    ImageDataset(test, test_tf), batch_size=64), progress=False)
nq = len(dataset.query)
result = evaluate(query_features=feats[:nq], gallery_features=feats[nq:], q_pids=pids[:nq], g_pids=pids[nq:],
                  q_camids=camids[:nq], g_camids=camids[nq:])
print(f"DBSCAN loop: mAP {100 * float(result['mAP']):.1f} %, rank-1 {100 * float(result['rank1']):.1f} %")"""),
]


if __name__ == "__main__":
    _build.main(CELLS, path=PATH, env_prefix="TIMM_REID_RECIPES", description=__doc__.split("\n\n")[0])
