"""argparse types for numbers: a usage error naming the value instead of a traceback later, or a
``nan`` that silently keeps or drops everything."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["int_at_least", "number"]


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (and <= ``maximum`` when given)."""
    what = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < minimum or (maximum is not None and v > maximum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


def number(minimum: float | None = None, *, strict: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float, at least ``minimum`` (above it when ``strict``)."""
    what = "a finite number"
    if minimum is not None:
        what = f"a number {'>' if strict else '>='} {minimum:g}"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(v) or (minimum is not None and (v <= minimum if strict else v < minimum)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse
