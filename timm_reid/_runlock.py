"""One run per folder: an advisory lock held while a run writes its folder, and the cleanup of
what a killed data generator left behind.

The lock is ``fcntl.flock`` on ``FOLDER/.timm-reid.lock``: the kernel releases it when the process
ends in any way (Ctrl-C, kill -9, a crash), so a stale lock never blocks a later run, and two runs
started into one folder (two pretrainings, two ``--init`` runs filling one cache) cannot both
write there: the second is refused naming the folder. Where ``fcntl`` does not exist (Windows)
runs are not locked.
"""
from __future__ import annotations

import os
import shutil

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one run per folder is then the user's care
    fcntl = None

__all__ = ["LOCK_FILE", "RunLock", "remove_stale_temporaries", "is_bookkeeping"]

LOCK_FILE = ".timm-reid.lock"
# Temporary folders of the generators (data/synthetic.py, data/video.py), renamed into place when
# complete: one left in a locked folder is from a generator that was killed.
_GENERATOR_TEMPORARIES = (".synthetic-", ".video-")


def is_bookkeeping(name: str) -> bool:
    """Entries of a run folder that are not the run's content (the lock, a killed generator's leftovers)."""
    return name == LOCK_FILE or name.startswith(_GENERATOR_TEMPORARIES)


class RunLock:
    """``acquire()`` before writing ``folder`` (creates it), ``release()`` when done (idempotent)."""

    def __init__(self, folder: str, *, flag: str = "--output"):
        self.folder, self.flag, self._fd = folder, flag, None

    def acquire(self) -> "RunLock":
        os.makedirs(self.folder, exist_ok=True)
        if fcntl is None:
            return self
        fd = os.open(os.path.join(self.folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FileExistsError(f"{self.flag} {self.folder} is in use by another run (process {holder}); wait "
                                  f"for it to finish, or choose another {self.flag}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def remove_stale_temporaries(folder: str) -> None:
    """Delete a killed generator's temporary folders in ``folder`` (call only while holding its lock)."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name.startswith(_GENERATOR_TEMPORARIES) and os.path.isdir(os.path.join(folder, name)):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
