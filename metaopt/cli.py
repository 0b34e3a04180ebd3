"""The ``metaopt`` command: ``metaopt demo | train | report | ...``.

Bad input (a malformed experiment file, an unknown optimizer, an out-of-range value) prints
one line naming the file, the key and what was expected, and exits with status 2: no
traceback, nothing written over existing results.
"""

from __future__ import annotations

import argparse
import sys

from metaopt.commands import COMMANDS, load
from metaopt.experiment import ExperimentError


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="metaopt", description="Choose, tune, schedule and "
                                  "learn PyTorch optimizers.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        load(name).add_arguments(sub_parser)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return load(args.command).run(args) or 0
    except ExperimentError as err:
        print(f"metaopt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metaopt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
