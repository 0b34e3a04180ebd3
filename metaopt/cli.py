"""The ``metaopt`` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metaopt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compare metaopt optimizers on the digits MLP")
    demo.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from metaopt.demo import main as demo_main

        demo_main(args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
