"""The command lines' argparse pieces: a parser whose errors are one line with exit code 2, and ``type=``
converters that refuse a bad value with a reason."""

from __future__ import annotations

import argparse
import math

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump) and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        """argparse strips a value of '--' (``--noise=--``) and stores [] unconverted: refuse it here."""
        namespace, rest = super().parse_known_args(args, namespace)
        for action in self._actions:
            if action.nargs is None and action.type is not None and getattr(namespace, action.dest, None) == []:
                self.error(f"argument {'/'.join(action.option_strings)}: expected a value, got '--'")
        return namespace, rest


def level(text: str) -> float:
    """A noise level on the [0, 1] scale: ``0.01`` or a fraction such as ``7.65/255`` (above 1 is refused: a level
    given on the 0–255 scale)."""
    from ._validation import unit_scale_level

    try:
        numerator, _, denominator = text.partition("/")
        value = float(numerator) / float(denominator) if denominator else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"'{text}' is not a number (use e.g. 0.01 or 7.65/255)") from None
    try:
        return unit_scale_level(value, "noise level")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def positive_level(text: str) -> float:
    """A noise level > 0 on the [0, 1] scale (a measurement's noise: the data term divides by it)."""
    value = level(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a noise level > 0, got {text} (the data term weighs the fit by "
                                         "1/σ²; for a nearly clean image give a small level such as 1/255)")
    return value


def solver_name(text: str) -> str:
    """A PnP scheme by our name or deepinv's, in any case (``pnp_stable.solvers.schemes.scheme_name``)."""
    from .solvers.schemes import scheme_name

    try:
        return scheme_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _whole(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """A whole number ≥ 1."""
    return _whole(text, 1)


def nonnegative_int(text: str) -> int:
    """A whole number ≥ 0 (0 switching something off)."""
    return _whole(text, 0)


def tile_size(text: str) -> int | str:
    """'auto', 0 (the whole image) or a tile size of at least 2 pixels."""
    if text == "auto":
        return text
    value = _whole(text, 0)
    if value == 1:
        raise argparse.ArgumentTypeError("a tile needs at least 2 pixels (0: the whole image, auto: tile large images)")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number ≥ 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number ≥ 0, got {text}")
    return value


def seed(text: str) -> int:
    """A random seed: a whole number in [0, 2⁶³)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number (a seed such as 0 or 1234)") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"a seed must lie in [0, 2⁶³), got {value}")
    return value
