"""``--init isr|supervised-source``: start training from a backbone pretrained here, made once and cached.

No pretrained weights can be downloaded on many ReID machines, and every paper starts from some.
This makes the two starting points of :mod:`timm_reid.pretrain` on the command line: the first run
pretrains (ISR on synthetic street video, or supervised on a synthetic source world, with the sizes
the study uses: ~6-10 minutes for convnext_atto at 64x32 on one CPU thread) into
``--init-cache/<init>-<model>-<H>x<W>``; later runs with the same model and input size reuse that
``backbone.safetensors``; an interrupted pretraining is resumed. Neither source sees the benchmark's
cameras or identities (the synthetic source world and the street video have their own seeds).
"""

import logging
import os

from timm_reid.train.errors import ConfigError

log = logging.getLogger("timm_reid.train")

STARTING_POINTS = {
    # the pretraining options behind each --init (timm_reid.pretrain defaults otherwise)
    "isr": {"method": "isr"},
    "supervised-source": {"method": "supervised", "epochs": 40},
}


def cache_dir(args):
    return os.path.join(args.init_cache, f"{args.init}-{args.model}-{args.height}x{args.width}")


def resolve_init(args, dist):
    """The ``backbone.safetensors`` of ``args.init`` (pretrained now on rank 0 if not cached)."""
    from timm_reid.backbone import BACKBONE_FILE

    run = cache_dir(args)
    path = os.path.join(run, BACKBONE_FILE)
    if dist.is_main and not os.path.isfile(path):
        try:
            _pretrain(args, run)
        except (ValueError, FileExistsError, FileNotFoundError) as e:
            # the pretraining's messages name its own folder and flags, which this command never had
            raise ConfigError(f"--init {args.init}: making the starting point in {run} (--init-cache "
                              f"{args.init_cache}) failed: {e}") from None
    dist.barrier()
    log.info(f"--init {args.init}: initial backbone {path}")
    return path


def _pretrain(args, run):
    from timm_reid._run import CHECKPOINT_FILE
    from timm_reid.pretrain import pretrain

    options = dict(STARTING_POINTS[args.init])
    method = options.pop("method")
    runtime = dict(threads=args.threads, device=args.device, no_progress=args.no_progress, workers=args.workers)
    if os.path.isfile(os.path.join(run, CHECKPOINT_FILE)):
        log.info(f"--init {args.init}: resuming the interrupted pretraining in {run}")
        return pretrain(method, output=run, resume=run, **runtime)
    log.info(f"--init {args.init}: pretraining {args.model} at {args.height}x{args.width} into {run} "
             f"(once; later runs reuse it)")
    return pretrain(method, output=run, model=args.model, height=args.height, width=args.width, seed=0,
                    **options, **runtime)
