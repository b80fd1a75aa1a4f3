"""Batched, gradient-free feature extraction with flip averaging and IIDS camera aggregation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


# Key names of the common ReID codebases: torchreid ("img", "pid", "camid"), fast-reid ("images",
# "targets", "camids"), timm-reid's own ("image", "pid", "camid").
BATCH_KEYS = {
    "images": ("img", "image", "images", "imgs"),
    "pids": ("pid", "pids", "targets", "label", "labels"),
    "camids": ("camid", "camids", "cam", "cams"),
}


def _from_dict(batch: dict):
    values = []
    for what, names in BATCH_KEYS.items():
        present = [name for name in names if name in batch]
        if len(present) != 1:
            problem = "none of" if not present else f"more than one of ({', '.join(present)})"
            raise ValueError(
                f"dict batch: {problem} the {what} keys {', '.join(map(repr, names))}; batch keys are "
                f"{sorted(map(str, batch))}. Rename the keys or pass batch_fn=lambda b: (images, pids, camids)"
            )
        values.append(batch[present[0]])
    return tuple(values)


def _unpack(batch, batch_fn=None):
    """(images, pids, camids) from a batch: ``batch_fn(batch)``, a dict with one of each of the
    ``BATCH_KEYS`` names, or an `(images, pids, camids, ...)` sequence."""
    if batch_fn is not None:
        out = batch_fn(batch)
        if not isinstance(out, (list, tuple)) or len(out) != 3:
            raise TypeError(f"batch_fn must return (images, pids, camids); got {type(out).__name__}"
                            + (f" of length {len(out)}" if isinstance(out, (list, tuple)) else ""))
        return tuple(out)
    if isinstance(batch, dict):
        return _from_dict(batch)
    if isinstance(batch, (list, tuple)) and len(batch) >= 3:
        return batch[0], batch[1], batch[2]
    raise TypeError(
        "the loader must yield (images, pids, camids) tuples or dicts with keys such as 'img', 'pid', "
        f"'camid' (see BATCH_KEYS), or pass batch_fn; got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (list, tuple)) else "")
    )


def _routes_by_camera(model) -> bool:
    """Whether ``model`` holds :class:`~timm_reid.models.dual_stream.ModalityRouted` layers, which
    need each image's camera id (``model(images, camids=...)``)."""
    from ..models.dual_stream import ModalityRouted

    return any(isinstance(m, ModalityRouted) for m in model.modules())


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
    batch_fn=None,
):
    """Features of every image a loader yields, with their identities and cameras.

    Args:
        model: returns (N, D) features (or a tuple whose first element is that). It is put in
            eval mode for the extraction and its previous mode restored afterwards.
        loader: iterable of `(images, pids, camids, ...)` tuples or of dicts with one key of each
            group of `BATCH_KEYS`: "img"/"image"/"images"/"imgs", "pid"/"pids"/"targets"/"label"/
            "labels", "camid"/"camids"/"cam"/"cams" (torchreid, fast-reid and timm-reid batches);
            images NCHW.
        flip: average the features of the image and its horizontal mirror (ReID standard).
        normalize: L2-normalise the final features (after flip averaging / aggregation).
        camera_aggregate: IIDS test-time aggregation: call
            `model(images, camids=camids, convert=True, targets=t)` for every target camera t in
            range(num_cameras) and sum the (flip-averaged) results; needs a TNorm-patched model.
            Otherwise the model is called as `model(images)`, or as `model(images, camids=camids)`
            when it is dual-stream (:func:`timm_reid.models.dual_stream`: its modality-specific
            layers route each image by its camera).
        num_cameras: number of cameras, required with camera_aggregate.
        device: where to run the model (default: the device of its first parameter).
        progress: show a tqdm progress bar.
        batch_fn: for any other batch format: `batch_fn(batch) -> (images, pids, camids)`.

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
    routed = _routes_by_camera(model)
    was_training = model.training
    model.eval()
    features, pids, camids = [], [], []
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc="extract features", disable=not progress):
                images, batch_pids, batch_camids = _unpack(batch, batch_fn)
                images = images.to(device)
                cams = torch.as_tensor(batch_camids).long()
                if camera_aggregate:
                    out = _camera_aggregated(model, images, cams.to(device), num_cameras, flip)
                elif routed:  # a dual-stream model sends each image through its modality's layers
                    out = _flip_averaged(model, images, flip, camids=cams.to(device))
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
