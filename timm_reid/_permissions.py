"""Files and folders get the permissions the user's umask allows, as ``open()`` and ``mkdir`` give.

Two writers used here create private entries whatever the umask: ``safetensors`` writes files
0600 and ``tempfile.mkdtemp`` (the generators' build-then-rename folders) creates 0700. Runs on
a shared folder (several nodes, other users reading the results) need what the umask says.
"""
from __future__ import annotations

import os

__all__ = ["as_umask_allows"]


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it; restored at once
    os.umask(mask)
    return mask


def as_umask_allows(path: str) -> str:
    """Give ``path`` the mode a plain ``open()`` (0666) or ``os.mkdir`` (0777) would under the umask."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())
    return path
