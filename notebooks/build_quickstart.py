"""Write ``notebooks/quickstart.ipynb`` from the cells below (the notebook is generated, edit here).

    python notebooks/build_quickstart.py                   # write the notebook without outputs
    python notebooks/build_quickstart.py --execute --tiny  # ... executed at tiny settings (as stored)
    python notebooks/build_quickstart.py --execute         # ... executed at full settings (~10 min)

The test suite (``tests/test_notebook.py``) executes the notebook with
``TIMM_REID_QUICKSTART_TINY=1``, which the first code cell reads.
"""
import os

import _build

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "quickstart.ipynb")

CELLS = [
    ("md", """# timm-reid quickstart

1. patch a timm model with AIBN and TNorm and look at what changed (`timm_reid.describe`);
2. see what the two layers do to feature statistics *per camera* - camera shift is what they attack;
3. train a tiny two-stage unsupervised pipeline (IICS intra + inter camera stages) on the built-in
   synthetic multi-camera data, and look at its plots.

Everything runs on a CPU. With `TIMM_REID_QUICKSTART_TINY=1` (what the test suite sets) the sizes are
so small that the numbers mean nothing; unset, the training cell runs the `demo` preset (about ten
minutes on two cores)."""),
    ("code", """import os
import tempfile
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # before tqdm.auto is imported: no ipywidgets

import matplotlib.pyplot as plt
import numpy as np
import timm
import torch

import timm_reid

TINY = os.environ.get("TIMM_REID_QUICKSTART_TINY", "0") == "1"
WORK = os.environ.get("TIMM_REID_QUICKSTART_DIR") or tempfile.mkdtemp(prefix="timm_reid_quickstart_")
NUM_CAMERAS = 4
if TINY:  # seconds, for the test suite
    IDENTITIES, TEST_IDENTITIES, ROUNDS, IMAGES_PER_CAMERA = 8, 4, 1, 12
else:     # the demo preset's data size and schedule
    IDENTITIES, TEST_IDENTITIES, ROUNDS, IMAGES_PER_CAMERA = 150, 100, 8, 64
torch.manual_seed(0)
torch.set_num_threads(min(2, os.cpu_count() or 1))
print(f"timm {timm.__version__}, timm_reid {timm_reid.__version__}, tiny={TINY}, work dir {WORK}")"""),
    ("md", """## 1. Patch a timm model

`patch` replaces every norm of the listed stages by AIBN (keeping the affine weights) and inserts a
TNorm after the listed stages, in place; stages are numbered from 1 as in the papers. The patched
model takes the camera ids as a keyword."""),
    ("code", """model = timm.create_model("convnext_atto", pretrained=False, num_classes=0)
timm_reid.patch(model, aibn=[3, 4], tnorm=[1, 2, 3], num_cameras=NUM_CAMERAS)
print(timm_reid.describe(model))

images = torch.randn(8, 3, 64, 32)
camids = torch.arange(8) % NUM_CAMERAS
model.train()
features = model(images, camids=camids)          # training: TNorm records per-camera statistics
print("pooled features:", tuple(features.shape))"""),
    ("md", """## 2. What AIBN and TNorm do to per-camera statistics

Synthetic data: person-like figures seen by cameras that differ in colour cast, contrast, blur,
noise and background (`timm_reid.data.synthetic`). We take the stage-1 feature maps of an untrained
ConvNeXt for images of every camera and ask how much of the variation of the per-image channel
means is explained by the camera (R^2 of a one-way split by camera): the higher, the more the
features encode the camera rather than the person.

- **raw**: the stage-1 output as it is.
- **AIBN** (gate 0.1 on batch statistics, as initialised): each image is normalised mostly by its
  own statistics, so the camera's colour cast and contrast - a per-image shift and scale - are
  divided out. What is left of the per-image means is small compared with the content.
- **TNorm, transform to camera 0** (IIDS): running statistics are kept per camera; converting
  re-styles every image from its camera's statistics to camera 0's, so all cameras look alike.
- **TNorm, normalize** (Qureshi & Dehghani): each camera standardised by its own statistics."""),
    ("code", """from timm_reid.data import ImageDataset, build_dataset, build_transforms
from timm_reid.layers import AIBN, TNorm

DATA_ROOT = os.path.join(WORK, "data")
dataset = build_dataset("synthetic", DATA_ROOT, seed=0, num_identities=IDENTITIES,
                        num_test_identities=TEST_IDENTITIES, num_cameras=NUM_CAMERAS,
                        style_strength=1.0, image_size=(64, 32))
print(dataset.summary())

# up to IMAGES_PER_CAMERA training images of every camera
records = [r for c in range(NUM_CAMERAS) for r in [r for r in dataset.train if r.camid == c][:IMAGES_PER_CAMERA]]
data = ImageDataset(records, build_transforms(64, 32, train=False))
x = torch.stack([data[i][0] for i in range(len(data))])
cams = torch.tensor([r.camid for r in records])

plain = timm.create_model("convnext_atto", pretrained=False, num_classes=0).eval()
with torch.no_grad():
    stage1 = plain.stages[0](plain.stem(x))                # (N, C, H, W)
C = stage1.shape[1]

aibn = AIBN(C).train()                                      # batch statistics of this batch
tnorm_t = TNorm(C, NUM_CAMERAS, momentum=1.0).train()      # momentum 1: running stats = these images
tnorm_n = TNorm(C, NUM_CAMERAS, mode="normalize", momentum=1.0).train()
with torch.no_grad():
    tnorm_t(stage1, cams)
    tnorm_n(stage1, cams)
    variants = {
        "raw": stage1,
        "AIBN": aibn(stage1),
        "TNorm transform -> camera 0": tnorm_t.eval()(stage1, cams, convert=True,
                                                      targets=torch.zeros_like(cams)),
        "TNorm normalize": tnorm_n.eval()(stage1, cams),
    }


def camera_r2(maps, cams):
    \"\"\"Share of the variance of per-image channel means explained by the camera.\"\"\"
    m = maps.mean(dim=(2, 3)).double()                      # (N, C)
    total = ((m - m.mean(0)) ** 2).sum()
    between = sum((cams == c).sum() * ((m[cams == c].mean(0) - m.mean(0)) ** 2).sum() for c in cams.unique())
    return float(between / total)


def style_to_content(maps, cams):
    \"\"\"Between-camera variance of the per-image channel means over the mean within-image variance.\"\"\"
    m = maps.mean(dim=(2, 3)).double()
    centres = torch.stack([m[cams == c].mean(0) for c in cams.unique()])
    return float(centres.var(0).mean() / maps.double().var(dim=(2, 3)).mean())


for name, maps in variants.items():
    print(f"{name:<30} camera R^2 {camera_r2(maps, cams):5.2f}   "
          f"camera style / content {style_to_content(maps, cams):.4f}")"""),
    ("code", """# two channels' per-image means, coloured by camera: raw features form camera islands
k1, k2 = stage1.mean(dim=(0, 2, 3)).argsort()[-2:].tolist()   # two channels with large activations
fig, axes = plt.subplots(1, len(variants), figsize=(4 * len(variants), 3.6))
for ax, (name, maps) in zip(axes, variants.items()):
    m = maps.mean(dim=(2, 3))
    for c in range(NUM_CAMERAS):
        ax.scatter(m[cams == c, k1], m[cams == c, k2], s=12, label=f"camera {c}")
    ax.set_title(f"{name}\\ncamera R^2 = {camera_r2(maps, cams):.2f}", fontsize=9)
    ax.set_xlabel(f"channel {k1} mean")
axes[0].set_ylabel(f"channel {k2} mean")
axes[0].legend(fontsize=7)
fig.tight_layout()
plt.show()"""),
    ("md", """## 3. Train a tiny two-stage pipeline

`python -m timm_reid.train` from Python: `parse_args` takes the same flags as the command line and
`main` returns the final metrics. The `demo` preset trains a randomly initialised `convnext_atto`
with AIBN in stages 3-4 and TNorm after stages 1-3 on the synthetic data, with per-camera feature
centring before clustering. Test-set numbers are evaluated for the curves only and never select a
checkpoint."""),
    ("code", """from timm_reid.train import main, parse_args

RUN = os.path.join(WORK, "run")
argv = ["--preset", "demo", "--seed", "0", "--output", RUN, "--root", DATA_ROOT,
        "--synthetic-cameras", str(NUM_CAMERAS), "--synthetic-identities", str(IDENTITIES),
        "--synthetic-test-identities", str(TEST_IDENTITIES), "--rounds", str(ROUNDS), "--no-progress"]
if TINY:
    argv += ["--intra-clusters", "6", "--inter-clusters", "8", "--intra-batch-size", "8", "--batch-size", "16",
             "--inter-epochs", "1", "--eval-every", "0"]
result = main(parse_args(argv))
print({k: round(100 * v, 1) for k, v in result["final"].items() if isinstance(v, float)})"""),
    ("md", """## 4. Plots of the run

Training curves (losses, pseudo-label quality against the hidden identities, test mAP / rank-1 and
the share of queries whose nearest gallery image comes from their own camera), the CMC curve, and a
2-D embedding of test features coloured by camera. For the ablation study on this data (stages,
AIBN/TNorm placement, camera-aware steps, style strength) see `benchmarks/results/README.md`."""),
    ("code", """from IPython.display import Image, display

for name in ("curves.png", "cmc.png", "embedding.png"):
    path = os.path.join(RUN, name)
    if os.path.exists(path):
        print(name)
        display(Image(filename=path))"""),
]


if __name__ == "__main__":
    _build.main(CELLS, path=PATH, env_prefix="TIMM_REID_QUICKSTART", description=__doc__.split("\n\n")[0])
