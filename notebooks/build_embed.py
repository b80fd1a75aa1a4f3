"""Write ``notebooks/embed.ipynb`` from the cells below (the notebook is generated, edit here).

    python notebooks/build_embed.py                   # write the notebook without outputs
    python notebooks/build_embed.py --execute --tiny  # ... executed at tiny settings (as stored)
    python notebooks/build_embed.py --execute         # ... executed at full settings (minutes)

The test suite (``tests/test_notebook.py``) executes it with ``TIMM_REID_EMBED_TINY=1``.
"""
import os

import _build

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "embed.ipynb")

CELLS = [
    ("md", """# timm-reid in your own training code

timm-reid's layers and `patch` are plain PyTorch modules: nothing here needs `timm_reid.train`.
This notebook shows the three shapes of code they usually land in, on the built-in synthetic
multi-camera data:

1. a **torchreid-style supervised loop**: batches `{"img", "pid", "camid"}`, a model made of a patched
   timm backbone and a BN-neck head whose `forward(x, camids)` passes the camera ids down;
2. a **cluster-contrast-style unsupervised loop**: pseudo labels from clustering, a cluster memory,
   an InfoNCE loss against it;
3. the same model under **DistributedDataParallel** (a one-process gloo group here; `torchrun` in real
   use);
4. **torchreid's engine and fast-reid's meta-architecture**, code you do not own, which call the model
   without camera ids: a three-line subclass of each passes the batch's ids through
   `with timm_reid.cameras(...)`;

and evaluates each with `timm_reid.evaluation.evaluate` on features the loop computed itself. The
cluster-contrast loop also runs with scikit-learn's DBSCAN, as cluster-contrast clusters.
With `TIMM_REID_EMBED_TINY=1` (the test suite) everything is so small that the numbers mean nothing."""),
    ("code", """import os
import tempfile
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # before tqdm.auto is imported: no ipywidgets

import torch
import torch.nn.functional as F
from torch import nn

import timm_reid
from timm_reid.data import ImageDataset, RandomIdentitySampler, build_dataset, build_transforms, read_image

TINY = os.environ.get("TIMM_REID_EMBED_TINY", "0") == "1"
WORK = os.environ.get("TIMM_REID_EMBED_DIR") or tempfile.mkdtemp(prefix="timm_reid_embed_")
NUM_CAMERAS, H, W = 4, 64, 32
if TINY:  # seconds, for the test suite
    MODEL, IDENTITIES, TEST_IDENTITIES, STEPS, CLUSTER_ROUNDS = "resnet10t", 8, 6, 2, 1
else:
    MODEL, IDENTITIES, TEST_IDENTITIES, STEPS, CLUSTER_ROUNDS = "resnet18", 100, 60, 300, 4
torch.manual_seed(0)
torch.set_num_threads(min(2, os.cpu_count() or 1))

dataset = build_dataset("synthetic", os.path.join(WORK, "data"), seed=0, num_identities=IDENTITIES,
                        num_test_identities=TEST_IDENTITIES, num_cameras=NUM_CAMERAS, image_size=(H, W))
print(dataset.summary())
print(f"tiny={TINY}")"""),
    ("md", """## 1. A torchreid-style loop

torchreid's datasets yield dicts with `"img"`, `"pid"`, `"camid"` (and `"impath"`); any dataset that
yields the camera id next to the image works the same way. The model owns the backbone and a BN-neck
head (BatchNorm1d with a frozen bias, then a bias-free classifier, as in the strong ReID baselines).
Its `forward(x, camids)` hands the camera ids to the patched backbone as a keyword: TNorm records
per-camera statistics in training and must see them there."""),
    ("code", """class DictImages(torch.utils.data.Dataset):
    \"\"\"What torchreid's ImageDataset yields: {"img", "pid", "camid", "impath"}.\"\"\"

    def __init__(self, records, transform):
        self.records, self.transform = list(records), transform

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        path, pid, camid = self.records[i]
        return {"img": self.transform(read_image(path)), "pid": pid, "camid": camid, "impath": path}


class ReIDModel(nn.Module):
    \"\"\"Patched timm backbone + BN-neck head. forward(x, camids) passes the camera ids down.\"\"\"

    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone = backbone
        self.bnneck = nn.BatchNorm1d(backbone.num_features)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(backbone.num_features, num_classes, bias=False)

    def forward(self, x, camids=None):
        features = self.backbone(x, camids=camids)
        if not self.training:
            return features                      # retrieval feature
        return self.classifier(self.bnneck(features)), features


def batch_hard_triplet(features, pids, margin=0.3):
    dist = torch.cdist(features, features)
    same = pids[:, None] == pids[None, :]
    hardest_positive = (dist * same).max(1).values
    hardest_negative = dist.masked_fill(same, float("inf")).min(1).values
    return F.relu(hardest_positive - hardest_negative + margin).mean()


def make_backbone():
    return timm_reid.create_model(MODEL, aibn=[3, 4], tnorm=[1, 2, 3], num_cameras=NUM_CAMERAS,
                                  num_classes=0)


train_tf, test_tf = build_transforms(H, W, train=True, pad=4), build_transforms(H, W, train=False)
sampler = RandomIdentitySampler([r.pid for r in dataset.train], num_instances=4, batch_size=16)
train_loader = torch.utils.data.DataLoader(DictImages(dataset.train, train_tf), batch_size=16, sampler=sampler)
model = ReIDModel(make_backbone(), dataset.num_train_pids)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=5e-4)

model.train()
step = 0
while step < STEPS:
    for batch in train_loader:
        logits, features = model(batch["img"], batch["camid"])
        loss = F.cross_entropy(logits, batch["pid"]) + batch_hard_triplet(features, batch["pid"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % max(1, STEPS // 5) == 0 or step == STEPS:
            print(f"step {step}: loss {loss.item():.3f}")
        if step == STEPS:
            break
    sampler.set_epoch(step)"""),
    ("md", """### Evaluate on the loop's own features

`timm_reid.evaluation.evaluate` takes query and gallery features (or a distance matrix) with their
identities and cameras and applies the Market-1501 protocol (same-identity same-camera gallery
entries removed). `timm_reid.extract_features` does the same extraction for you, reading the dict
batches directly (`img`/`image`/`images`, `pid`/`pids`/`targets`, `camid`/`camids`; `batch_fn=` for
anything else) and adding flip averaging."""),
    ("code", """from timm_reid.evaluation import evaluate

test_loader = torch.utils.data.DataLoader(DictImages(dataset.query + dataset.gallery, test_tf), batch_size=64)


@torch.no_grad()
def own_features(model, loader):
    model.eval()
    feats, pids, camids = [], [], []
    for batch in loader:
        feats.append(F.normalize(model(batch["img"], batch["camid"]), dim=1))
        pids.append(batch["pid"])
        camids.append(batch["camid"])
    return torch.cat(feats), torch.cat(pids), torch.cat(camids)


def report(name, feats, pids, camids):
    nq = len(dataset.query)
    result = evaluate(query_features=feats[:nq], gallery_features=feats[nq:], q_pids=pids[:nq],
                      g_pids=pids[nq:], q_camids=camids[:nq], g_camids=camids[nq:])
    print(f"{name}: mAP {100 * float(result['mAP']):.1f} %, rank-1 {100 * float(result['rank1']):.1f} %")
    return result


feats, pids, camids = own_features(model, test_loader)
report("torchreid-style loop, own features", feats, pids, camids)
same = timm_reid.extract_features(model, test_loader, flip=False, progress=False)
assert torch.allclose(same[0], feats, atol=1e-5) and torch.equal(same[1], pids)
report("extract_features (flip averaged)", *timm_reid.extract_features(model, test_loader, progress=False));"""),
    ("md", """## 2. A cluster-contrast-style loop

No labels: each round clusters the training features into pseudo identities, keeps one L2-normalised
centroid per cluster in a memory, and trains with an InfoNCE loss of every feature against all
centroids; the memory follows the features with momentum. Un-clustered samples (label -1) are left
out. Cluster-contrast uses DBSCAN on re-ranked distances; here average linkage on re-ranked
distances (`timm_reid.cluster`), with singleton clusters as the outliers, keeps the example
dependency-free. The camera ids go to the backbone
exactly as in the supervised loop."""),
    ("code", """from timm_reid.cluster import agglomerative, rerank
from timm_reid.data import relabel


class ClusterMemory(nn.Module):
    \"\"\"One L2-normalised centroid per pseudo identity; InfoNCE against all of them.\"\"\"

    def __init__(self, centroids, temperature=0.05, momentum=0.2):
        super().__init__()
        self.register_buffer("features", F.normalize(centroids, dim=1))
        self.temperature, self.momentum = temperature, momentum

    def forward(self, features, labels):
        return F.cross_entropy(F.normalize(features, dim=1) @ self.features.t() / self.temperature, labels)

    @torch.no_grad()
    def update(self, features, labels):  # after backward: the loss graph reads the old centroids
        for f, y in zip(F.normalize(features, dim=1), labels):
            self.features[y] = F.normalize(self.momentum * self.features[y] + (1 - self.momentum) * f, dim=0)


def train_round(backbone, optimizer, feats, labels, *, seed):
    \"\"\"One round on pseudo labels ``labels`` (-1: left out): a memory of the clusters' mean features,
    InfoNCE against it, momentum updates after each step; returns the last loss.\"\"\"
    clusters = int(labels.max()) + 1
    memory = ClusterMemory(torch.stack([feats[torch.as_tensor(labels == k)].mean(0) for k in range(clusters)]))
    pseudo = relabel(dataset.train, labels)
    sampler = RandomIdentitySampler([r.pid for r in pseudo], num_instances=4, batch_size=16, seed=seed)
    loader = torch.utils.data.DataLoader(ImageDataset(pseudo, train_tf), batch_size=16, sampler=sampler)
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
    return loss.item()


backbone = make_backbone()
optimizer = torch.optim.AdamW(backbone.parameters(), lr=3e-4, weight_decay=5e-4)
plain_loader = torch.utils.data.DataLoader(ImageDataset(dataset.train, test_tf), batch_size=64)
for round_index in range(CLUSTER_ROUNDS):
    feats, _, _ = timm_reid.extract_features(backbone, plain_loader, progress=False)
    dist = rerank(features=feats, k1=6, k2=3)
    labels = agglomerative(dist, n_clusters=max(4, len(feats) // 6), drop_singletons=True)  # singletons: -1
    clusters = int(labels.max()) + 1
    loss = train_round(backbone, optimizer, feats, labels, seed=round_index)
    print(f"round {round_index + 1}: {clusters} clusters of {int((labels >= 0).sum())} images, loss {loss:.3f}")

report("cluster-contrast-style loop", *own_features(ReIDModel(backbone, 1), test_loader));"""),
    ("md", """### The same loop with DBSCAN

Cluster-contrast (and ICE) cluster with DBSCAN on the k-reciprocal re-ranked distance; scikit-learn
(a timm-reid dependency) runs it on the precomputed matrix. DBSCAN's `eps` is a distance: on
Market-1501 cluster-contrast uses 0.6; on data of another size pick it from the distances, here the
median distance of each image to its `min_samples`-th neighbour (the usual k-distance heuristic), so
that about half the images are core points. Label -1 (noise) is left out of the round, as
cluster-contrast does; `timm_reid.cluster.dbscan_jaccard` gives the same partition from the sparse
Jaccard graph without the dense matrix (`python -m timm_reid.train --method ice` uses it)."""),
    ("code", """import numpy as np
from sklearn.cluster import DBSCAN

MIN_SAMPLES = 4
db_backbone = make_backbone()
optimizer = torch.optim.AdamW(db_backbone.parameters(), lr=3e-4, weight_decay=5e-4)
for round_index in range(CLUSTER_ROUNDS):
    feats, _, _ = timm_reid.extract_features(db_backbone, plain_loader, progress=False)
    dist = np.asarray(rerank(features=feats, k1=6, k2=3), dtype=np.float64)
    eps = float(np.median(np.sort(dist, axis=1)[:, MIN_SAMPLES]))
    labels = DBSCAN(eps=eps, min_samples=MIN_SAMPLES, metric="precomputed").fit_predict(dist)
    clusters, noise = int(labels.max()) + 1, int((labels < 0).sum())
    loss = train_round(db_backbone, optimizer, feats, labels, seed=round_index)  # noise (-1) left out
    print(f"round {round_index + 1}: DBSCAN eps {eps:.3f}: {clusters} clusters, {noise} noise images, loss {loss:.3f}")

report("DBSCAN loop", *own_features(ReIDModel(db_backbone, 1), test_loader));"""),
    ("md", """## 3. DistributedDataParallel

Patch the backbone **before** wrapping it. Through DDP the camera ids are ordinary forward
arguments: `ddp_model(x, camids)` reaches `ReIDModel.forward`, which passes them to the backbone as
before. AIBN and TNorm compute batch (and per-camera) statistics on each process's share of the
batch, as BatchNorm does without SyncBatchNorm; set their `process_group` to all-reduce the
statistics (and their gradients) over the processes, so the result does not depend on how the batch
is split. Two rules from the design: do not use `nn.DataParallel` (its replicas are threads that
would share one camera context; use DDP), and `with timm_reid.cameras(...)` is per thread, so pass
the ids as arguments where other threads run the model.

Real runs start one process per GPU with `torchrun --nproc-per-node N train.py` and a
`DistributedSampler`; this cell builds a one-process gloo group so that it runs anywhere."""),
    ("code", """import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo", init_method="file://" + os.path.join(WORK, "ddp_rendezvous"), rank=0, world_size=1)
try:
    model = ReIDModel(make_backbone(), dataset.num_train_pids)
    for module in model.modules():
        if isinstance(module, (timm_reid.AIBN, timm_reid.TNorm)):
            module.process_group = dist.group.WORLD     # all-reduce batch statistics over the processes
    ddp_model = DDP(model)
    optimizer = torch.optim.AdamW(ddp_model.parameters(), lr=3e-4)
    ddp_model.train()
    for step, batch in enumerate(train_loader):
        logits, features = ddp_model(batch["img"], batch["camid"])
        loss = F.cross_entropy(logits, batch["pid"]) + batch_hard_triplet(features, batch["pid"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step + 1 == STEPS:
            break
    print(f"DDP over {dist.get_world_size()} process(es): {step + 1} steps, loss {loss.item():.3f}")
    report("DDP loop", *own_features(ddp_model.module, test_loader))
finally:
    dist.destroy_process_group()"""),
    ("md", """## 4. Inside torchreid and fast-reid

torchreid's engines call the model as `self.model(imgs)`, fast-reid's trainer as
`model(batched_inputs)` whose backbone sees only `batched_inputs["images"]`: no camera ids reach the
backbone, and a TNorm in training refuses to run without them (it would record nothing and later
convert with untrained statistics). The recipe is a subclass that opens a `timm_reid.cameras` block
around the step; everything the step runs in this thread (the forward and the backward) sees the
batch's camera ids:

```python
class CameraAwareEngine(torchreid.engine.ImageSoftmaxEngine):
    def forward_backward(self, data):
        with timm_reid.cameras(data["camid"]):
            return super().forward_backward(data)


@META_ARCH_REGISTRY.register()            # fast-reid; config: META_ARCHITECTURE: CameraAwareBaseline
class CameraAwareBaseline(fastreid.modeling.meta_arch.Baseline):
    def forward(self, batched_inputs):
        with timm_reid.cameras(batched_inputs["camids"]):
            return super().forward(batched_inputs)
```

Neither library is a timm-reid dependency, so this notebook does not import them: each subclass
runs against a **small stand-in base class** that does what the library's class does at that point
(`ImageSoftmaxEngine.forward_backward`: parse the batch, `self.model(imgs)`, cross-entropy, step;
`Baseline.forward`: images to the backbone, a loss dict in training, features in eval; the
trainer's `run_step`). With the real library, drop the stand-ins: the subclasses are the same."""),
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


class Baseline(nn.Module):
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
    losses = sum(model(data).values())
    optimizer.zero_grad()
    losses.backward()
    optimizer.step()
    return losses.item()


class TorchreidModel(nn.Module):
    \"\"\"A torchreid-style model: logits in training, features in eval; forward(x) only.\"\"\"

    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone, self.fc = backbone, nn.Linear(backbone.num_features, num_classes)

    def forward(self, x):
        features = self.backbone(x)
        return self.fc(features) if self.training else features


def tnorm_rows_recorded(backbone):
    \"\"\"Cameras whose TNorm running statistics moved away from their init (0 mean, 1 variance).\"\"\"
    tnorm = next(m for m in backbone.modules() if isinstance(m, timm_reid.TNorm))
    return int((tnorm.running_mean.abs().sum(1) > 0).sum())


model = TorchreidModel(make_backbone(), dataset.num_train_pids)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
try:
    ImageSoftmaxEngine(train_loader, model, optimizer).train(STEPS)
except ValueError as error:
    print("plain engine refused:", str(error).split(":")[1].strip()[:90], "...")
summary = CameraAwareEngine(train_loader, model, optimizer).train(STEPS)
print(f"camera-aware engine: {STEPS} steps, loss {summary['loss']:.3f}, "
      f"TNorm statistics recorded for {tnorm_rows_recorded(model.backbone)} of {NUM_CAMERAS} cameras")

meta = CameraAwareBaseline(make_backbone(), dataset.num_train_pids).train()
optimizer = torch.optim.AdamW(meta.parameters(), lr=3e-4)
for step, batch in enumerate(train_loader):       # fast-reid's batch keys: images, targets, camids
    loss = run_step(meta, optimizer, {"images": batch["img"], "targets": batch["pid"], "camids": batch["camid"]})
    if step + 1 == STEPS:
        break
print(f"fast-reid style: {STEPS} steps, loss {loss:.3f}, "
      f"TNorm statistics recorded for {tnorm_rows_recorded(meta.backbone)} of {NUM_CAMERAS} cameras")"""),
    ("md", """## Keep the trained backbone

`timm_reid.save_backbone` writes the patched backbone (no heads) to one pickle-free safetensors file
with its configuration and input size; `timm_reid.load_backbone` rebuilds it, and
`timm-reid-evaluate --backbone FILE --dataset NAME --root DIR` evaluates it. For ONNX,
`timm_reid.export.export_onnx(backbone, "reid.onnx", x, camids, targets)` exports it with the camera
ids as graph inputs."""),
    ("code", """path = timm_reid.save_backbone(backbone, os.path.join(WORK, "backbone.safetensors"),  # the cluster-contrast one
                              model_name=MODEL, input_size=(H, W))
restored = timm_reid.load_backbone(path)
x = torch.randn(2, 3, H, W)
with torch.no_grad():
    assert torch.equal(restored(x), backbone.eval()(x))
print("restored", path.rsplit(os.sep, 1)[-1], restored.timm_reid_backbone["input_size"])"""),
]


if __name__ == "__main__":
    _build.main(CELLS, path=PATH, env_prefix="TIMM_REID_EMBED", description=__doc__.split("\n\n")[0])
