"""Batched, gradient-free feature extraction with flip averaging and IIDS camera aggregation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def _unpack(batch):
    """(images, pids, camids) from a `(images, pids, camids, ...)` sequence or a dict batch."""
    if isinstance(batch, dict):
        missing = [key for key in ("image", "pid", "camid") if key not in batch]
        if missing:
            raise ValueError(f"dict batches need the keys 'image', 'pid', 'camid'; missing {missing}")
        return batch["image"], batch["pid"], batch["camid"]
    if isinstance(batch, (list, tuple)) and len(batch) >= 3:
        return batch[0], batch[1], batch[2]
    raise TypeError(
        "the loader must yield (images, pids, camids) tuples or dicts with keys 'image', 'pid', "
        f"'camid'; got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (list, tuple)) else "")
    )


def _embed(model, images, **camera_kwargs) -> torch.Tensor:
    """The model's feature output: a tensor, or the first element of a returned tuple/list."""
    output = model(images, **camera_kwargs)
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.dim() < 2:
        raise TypeError(
            "the model must return a (N, D) feature tensor or a tuple whose first element is "
            f"one; got {type(output).__name__}"
        )
    return output.flatten(1).float()


def _flip_averaged(model, images, flip: bool, **camera_kwargs) -> torch.Tensor:
    features = _embed(model, images, **camera_kwargs)
    if flip:
        features = 0.5 * (features + _embed(model, torch.flip(images, dims=[3]), **camera_kwargs))
    return features


def _camera_aggregated(model, images, camids, num_cameras: int, flip: bool) -> torch.Tensor:
    """IIDS: sum over target cameras t of the features converted from each image's camera to t."""
    total = 0.0
    for target in range(num_cameras):
        total = total + _flip_averaged(
            model, images, flip, camids=camids, convert=True, targets=torch.full_like(camids, target)
        )
    return total


def extract_features(
    model: torch.nn.Module,
    loader,
    *,
    flip: bool = True,
    normalize: bool = True,
    camera_aggregate: bool = False,
    num_cameras: int | None = None,
    device=None,
    progress: bool = True,
):
    """Features of every image a loader yields, with their identities and cameras.

    Args:
        model: returns (N, D) features (or a tuple whose first element is that). It is put in
            eval mode for the extraction and its previous mode restored afterwards.
        loader: iterable of `(images, pids, camids, ...)` tuples or dicts with keys "image",
            "pid", "camid" (images NCHW).
        flip: average the features of the image and its horizontal mirror (ReID standard).
        normalize: L2-normalise the final features (after flip averaging / aggregation).
        camera_aggregate: IIDS test-time aggregation: call
            `model(images, camids=camids, convert=True, targets=t)` for every target camera t in
            range(num_cameras) and sum the (flip-averaged) results; needs a TNorm-patched model.
            Otherwise the model is called as `model(images)`.
        num_cameras: number of cameras, required with camera_aggregate.
        device: where to run the model (default: the device of its first parameter).
        progress: show a tqdm progress bar.

    Returns:
        `(features, pids, camids)`: (N, D) float32 CPU tensor, (N,) int64, (N,) int64.
    """
    if camera_aggregate and (num_cameras is None or isinstance(num_cameras, bool)
                             or not isinstance(num_cameras, int) or num_cameras < 1):
        raise ValueError(
            f"camera_aggregate=True needs num_cameras (a positive int), got {num_cameras!r}; "
            "pass the number of cameras the model's TNorm layers were built with"
        )
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    features, pids, camids = [], [], []
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc="extract features", disable=not progress):
                images, batch_pids, batch_camids = _unpack(batch)
                images = images.to(device)
                cams = torch.as_tensor(batch_camids).long()
                if camera_aggregate:
                    out = _camera_aggregated(model, images, cams.to(device), num_cameras, flip)
                else:
                    out = _flip_averaged(model, images, flip)
                features.append((F.normalize(out, dim=1) if normalize else out).cpu())
                pids.append(torch.as_tensor(batch_pids).long().cpu())
                camids.append(cams.cpu())
    finally:
        model.train(was_training)
    if not features:
        raise ValueError("the loader yielded no batches; nothing to extract")
    return torch.cat(features), torch.cat(pids), torch.cat(camids)
