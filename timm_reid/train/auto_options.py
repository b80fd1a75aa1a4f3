"""Options that take a number or ``auto`` (a value the method finds from the unlabeled data)."""

import argparse

AUTO = "auto"


def number_or_auto(kind):
    """argparse ``type``: ``auto`` or a number of ``kind`` (int or float)."""

    def parse(text):
        if text == AUTO:
            return AUTO
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {AUTO!r} or {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None

    parse.__name__ = f"{kind.__name__} or auto"
    return parse


def is_auto(value):
    return value == AUTO
