"""Errors a user can fix: the command line prints them as one paragraph and exits with status 2
(defined in the run layer, :mod:`timm_reid._run`, which pretraining shares)."""

from timm_reid._run import CheckpointError, ConfigError

__all__ = ["CheckpointError", "ConfigError"]
