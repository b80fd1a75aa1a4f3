"""How camera ids reach TNorm layers that sit deep inside a model (docs/DESIGN.md 3.3).

A :class:`CameraContext` holds the camera ids, the conversion switch and the conversion targets of
one forward. Surgery gives every TNorm of a patched model the same context and fills it from a
forward pre-hook (``model(x, camids=...)``); code that cannot change call sites uses the
:func:`cameras` context manager instead, which TNorms read when their own context is not active.

``cameras`` is thread-local: a block entered in one thread is invisible to models run in other
threads (worker threads, ``nn.DataParallel`` replicas); ``model(x, camids=...)`` has no such limit.
``nn.DataParallel`` itself is refused by TNorm (its replicas share one context object).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, List, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["CameraContext", "cameras", "current_context", "as_camera_tensor"]

CameraIds = Union[Tensor, Sequence[int]]


def as_camera_tensor(ids: Optional[CameraIds], what: str = "camids") -> Optional[Tensor]:
    """Turn camera ids (tensor, list, numpy array) into an int64 tensor, rejecting non-integers."""
    if ids is None:
        return None
    t = ids if isinstance(ids, Tensor) else torch.as_tensor(ids)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what} must be integer camera indices, got dtype {t.dtype}; pass e.g. torch.long ids")
    if t.dim() != 1:
        raise ValueError(f"{what} must be a 1-D tensor with one camera id per sample, got shape {tuple(t.shape)}")
    return t.long()


class CameraContext:
    """Camera ids, conversion switch and conversion targets for the TNorms of one forward.

    Targets are drawn uniformly per sample the first time a TNorm asks for them and then reused, so
    every TNorm of one forward converts a sample to the same camera (docs/DESIGN.md 3.2).
    ``record=False`` says on purpose that the batch has no camera ids: TNorm in ``mode="transform"``
    passes it through in training without recording statistics (otherwise an error).
    """

    def __init__(self) -> None:
        self.clear()

    def set(
        self,
        camids: Optional[CameraIds] = None,
        convert: bool = False,
        targets: Optional[CameraIds] = None,
        record: bool = True,
    ) -> None:
        if not isinstance(record, bool):
            raise TypeError(f"record must be True or False, got {record!r}")
        self.camids = as_camera_tensor(camids, "camids")
        self.targets = as_camera_tensor(targets, "targets")
        self.convert = bool(convert)
        self.record = record
        self.active = True

    def clear(self) -> None:
        self.camids: Optional[Tensor] = None
        self.targets: Optional[Tensor] = None
        self.convert = False
        self.record = True
        self.active = False

    def targets_for(self, n: int, num_cameras: int, device: torch.device) -> Tensor:
        """The conversion targets of this forward, drawn once (uniformly over cameras) if not given."""
        if self.targets is None:
            self.targets = torch.randint(num_cameras, (n,), device=device)
        return self.targets

    def __repr__(self) -> str:
        return (
            f"CameraContext(active={self.active}, camids={self.camids}, convert={self.convert}, "
            f"targets={self.targets}, record={self.record})"
        )


_local = threading.local()


def _stack() -> List[CameraContext]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def current_context() -> Optional[CameraContext]:
    """The innermost active :func:`cameras` context of this thread, or None."""
    stack = _stack()
    return stack[-1] if stack else None


@contextlib.contextmanager
def cameras(
    camids: Optional[CameraIds] = None,
    *,
    convert: bool = False,
    targets: Optional[CameraIds] = None,
    record: bool = True,
) -> Iterator[CameraContext]:
    """Hand camera ids (and conversion targets) to every TNorm called inside the block.

    ``targets`` are drawn uniformly per sample at the first TNorm call when ``convert=True`` and
    none are given; they stay fixed for the rest of the block, so one block should wrap one forward.
    ``record=False`` (with no ``camids``): the batch has no camera ids on purpose; TNorms in
    ``mode="transform"`` pass it through in training without recording statistics, where a
    training forward without camera ids is otherwise an error.

    The block holds for the current thread only: models run in other threads (worker threads,
    ``nn.DataParallel`` replicas) do not see it; pass ``model(x, camids=...)`` there.

    Example::

        with timm_reid.cameras(camids, convert=True):
            feats = model(images)
        with timm_reid.cameras(record=False):  # identity pass, nothing recorded
            feats = model(unlabelled_images)
    """
    if record is False and camids is not None:
        raise ValueError(
            "cameras(camids, record=False): record=False is the explicit way to run without camera ids; "
            "with camera ids TNorm records their statistics in training - drop one of the two"
        )
    ctx = CameraContext()
    ctx.set(camids, convert=convert, targets=targets, record=record)
    stack = _stack()
    stack.append(ctx)
    try:
        yield ctx
    finally:
        stack.remove(ctx)
