"""How fastconv and PyTorch scale with threads: forward + backward of the benchmark
catalogue's shapes at 1, 2, 4, ... threads, both libraries timed interleaved in
this one process with the same thread count (fastconv.timing).

    python bench/scaling.py [--threads 1,2,4,8,16] [--filter res3x3,convT]
                            [--dtype float32] [--extra] [--out scaling.json]
    python bench/scaling.py --markdown scaling.json

For each case and thread count it prints both times, fastconv's speed relative to
PyTorch, and each library's speedup over its own one-thread time (its scaling; the
thread counts must include 1 for that). Results are checked against PyTorch's; the
JSON file holds every figure and the machine.
"""

from __future__ import annotations

import argparse
import json
import sys

# fastconv before NumPy, as python -m fastconv bench (see fastconv/__init__.py)
from fastconv import catalogue


def parse_args(argv):
    from fastconv.threads import cpu_count

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = ",".join(str(1 << i) for i in range(cpu_count().bit_length()) if 1 << i <= cpu_count())
    p.add_argument("--threads", default=default, help=f"comma-separated thread counts (default: {default})")
    p.add_argument("--filter", default="", help="comma-separated substrings of case names (or ops: conv, convT, max, avg)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--extra", action="store_true", help="also the shapes outside the catalogue")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case and thread count")
    p.add_argument("--out", default="scaling.json")
    p.add_argument("--markdown", metavar="SCALING_JSON", help="print an earlier run as a Markdown table, run nothing")
    args = p.parse_args(argv)
    try:
        args.threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        p.error(f"--threads must be comma-separated ints, got {args.threads!r}")
    return args


def markdown(report) -> str:
    """An earlier run as a Markdown table: per case, each thread count's fastconv
    time, its speed relative to PyTorch, and both libraries' scaling over one thread."""
    runs = {}
    for r in report["results"]:
        runs.setdefault(r["case"], {})[r["threads"]] = r
    threads = sorted({r["threads"] for r in report["results"]})
    lines = [
        "| case | " + " | ".join(f"{n} thr: ms, vs torch" for n in threads) + f" | scaling 1 to {threads[-1]} (fastconv / torch) |",
        "|---|" + "---|" * (len(threads) + 1),
    ]
    for case, by_threads in runs.items():
        cells = [f"{by_threads[n]['fastconv_s'] * 1e3:.2f}, {by_threads[n]['torch_s'] / by_threads[n]['fastconv_s']:.2f}x" for n in threads]
        one, most = by_threads[threads[0]], by_threads[threads[-1]]
        scaling = f"{one['fastconv_s'] / most['fastconv_s']:.1f}x / {one['torch_s'] / most['torch_s']:.1f}x" if threads[0] == 1 else "-"
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {scaling} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown(json.load(f)))
        return 0
    # PyTorch first, as in python -m fastconv bench (see fastconv.threads)
    torch = catalogue.torch_module()
    if torch is None:
        print("bench/scaling.py needs PyTorch", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.table import Table

    import fastconv
    from fastconv.bench import machine_info, max_relative_error
    from fastconv.timing import interleaved_medians

    try:
        for n in args.threads:
            fastconv.set_num_threads(n)  # refuses a count past NUMBA_NUM_THREADS, before any timing
    except ValueError as exc:
        print(f"bench/scaling.py: --threads: {exc}", file=sys.stderr)
        return 2
    cases = catalogue.matching(catalogue.CATALOGUE + (catalogue.EXTRA if args.extra else []), args.filter, ops=True)
    if not cases:
        print(f"bench/scaling.py: --filter {args.filter!r} matches no case", file=sys.stderr)
        return 2
    console = Console(width=max(120, Console().width))
    table = Table(title=f"forward + backward, {args.dtype}: ms (fastconv / torch), fastconv vs torch, scaling over one thread")
    table.add_column("case")
    for n in args.threads:
        table.add_column(f"{n} thr", justify="right")
    records = []
    tolerance = 1e-4 if args.dtype == "float32" else 1e-10
    for case in cases:
        wl = catalogue.workload(case, args.dtype)
        ours, theirs = wl.runs["fastconv"]["fwdbwd"], wl.runs["torch"]["fwdbwd"]
        error = max(max_relative_error(a, b) for a, b in zip(ours(), theirs()))
        cells = []
        for n in args.threads:
            fastconv.set_num_threads(n)
            torch.set_num_threads(n)
            t = interleaved_medians({"fastconv": ours, "torch": theirs}, rounds=args.rounds, budget_s=2.0)
            records.append({"case": case.name, "threads": n, "fastconv_s": t["fastconv"], "torch_s": t["torch"], "error_vs_torch": error})
            cells.append(t)
        one = cells[0] if args.threads[0] == 1 else None
        row = []
        for t in cells:
            text = f"{t['fastconv'] * 1e3:.2f} / {t['torch'] * 1e3:.2f}  {t['torch'] / t['fastconv']:.2f}x"
            if one:
                text += f"  ({one['fastconv'] / t['fastconv']:.1f} / {one['torch'] / t['torch']:.1f})"
            row.append(text)
        table.add_row(case.name + ("" if error <= tolerance else f" [red]error {error:.1e}[/]"), *row)
        console.print(f"{case.name}: {'  |  '.join(row)}")
    console.print(table)
    report = {"machine": machine_info(args.threads), "dtype": args.dtype, "results": records}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    console.print(f"wrote {args.out}")
    return 0 if all(r["error_vs_torch"] <= tolerance for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
