"""The ``pnp-stable`` command line."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pnp-stable",
        description="Plug-and-Play restoration with provably averaged denoisers.",
    )
    parser.add_argument("--version", action="version", version=f"pnp-stable {__version__}")
    parser.add_subparsers(dest="command", title="sub-commands", metavar="(none yet: deblur, denoise, certify, models, train and demo are planned)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
