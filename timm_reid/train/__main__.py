"""``python -m timm_reid.train``: see ``--help``."""

from timm_reid.train.pipeline import cli

if __name__ == "__main__":
    cli()
