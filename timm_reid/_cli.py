"""Small helpers shared by the command-line entry points (program names, error exits)."""
from __future__ import annotations

import os
import sys


class UsageError(Exception):
    """A configuration problem the user can fix: printed as one paragraph, exit status 2."""


def prog_name(script: str, module: str) -> str:
    """``script`` when run as that console script, else ``python -m module`` (for ``--help``)."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return script if invoked.startswith(script) else f"python -m {module}"


def fail(prog: str, message: str) -> int:
    """Print ``prog: error: message`` on stderr (argparse's format) and return exit status 2."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2
