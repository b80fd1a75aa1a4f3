"""Constructor-argument checks shared by the layers (and the same rules as :func:`timm_reid.patch`)."""
from __future__ import annotations

__all__ = ["check_count", "check_gate_init"]


def check_count(value, name: str, owner: str) -> None:
    """A positive ``int`` (``bool`` is refused: ``True`` is an int to Python, not a count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")


def check_gate_init(value, owner: str) -> float:
    """The initial gate: a number in [0, 1] (the gate is clamped there and gets no gradient outside)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{owner}: gate_init must be a number in [0, 1], got {value!r}: the gate is clamped to [0, 1] "
            "and gets no gradient outside it"
        )
    return float(value)
