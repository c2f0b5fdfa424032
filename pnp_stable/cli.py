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
    commands = parser.add_subparsers(dest="command", title="sub-commands",
                                     metavar="train (deblur, denoise, certify, models and demo are planned)")
    commands.add_parser("train", help="train a certified denoiser (options: pnp-stable train --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        from .training.__main__ import main as train_main

        return train_main(rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    if args.command is None:
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
