"""Command line: `python -m fastconv demo`."""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastconv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run every operator and gradient and compare with the NumPy reference")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from fastconv import demo

        return demo.main()
    return 2


if __name__ == "__main__":
    sys.exit(main())
