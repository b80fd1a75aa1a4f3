"""Errors a user can fix: the command line prints them as one paragraph and exits with status 2."""


class ConfigError(ValueError):
    """An option value, an option combination or a config file that cannot work; the message
    names the option, the value and the fix."""


class CheckpointError(ValueError):
    """A file that is not a readable timm-reid checkpoint (truncated, empty, foreign, or holding
    objects that only unpickling could rebuild)."""
