"""Suite-wide settings."""
import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two xdist workers on two cores: one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)

if not torch.cuda.is_available():
    # Triton reads this when a kernel module is first imported, so it must be set before any
    # test directory imports timm_reid.kernels: without a GPU the kernels run interpreted.
    os.environ.setdefault("TRITON_INTERPRET", "1")
