"""fastconv's command line.

    python -m fastconv bench [options]   the benchmark report (see --help)
    python -m fastconv train [options]   train LeNet-5 on the bundled digits (see --help)
    python -m fastconv demo              every operator once, compared with the reference
"""

import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"bench": "fastconv.bench", "demo": "fastconv.demo", "train": "fastconv.train"}
    if not argv or argv[0] not in commands:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"python -m fastconv: unknown command {argv[0]!r}", file=sys.stderr)
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = __import__(commands[argv[0]], fromlist=["main"])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
