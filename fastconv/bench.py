"""`python -m fastconv bench`: fastconv vs the NumPy reference vs PyTorch CPU,
speed and results side by side, over the benchmark catalogue.

Every case is timed for each implementation interleaved in this one process with the
same thread count (median of rounds after a warm-up call; see fastconv.timing).
Results are compared with the reference (and PyTorch); a result outside tolerance,
or an exception, is an error row and makes the command exit non-zero. Compile time
is measured apart, in fresh processes, never inside the kernel times.

Both Numba and PyTorch run OpenMP thread pools that by default spin for a while
after each parallel region; when two libraries alternate, each one's spinning
threads take the cores the other needs. Each library runs with its default wait
policy (OMP_WAIT_POLICY=PASSIVE would put the threads to sleep, but it slowed
PyTorch's own convolutions by 10-60% here), and each timed call follows an untimed
call of its own (fastconv.timing). NumPy's OpenBLAS workers spin the same way after
each GEMM; `import fastconv` sets their timeout short (see fastconv/__init__.py),
which this command, importing fastconv before NumPy, always gets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m fastconv bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and no reference timing: under a minute")
    p.add_argument("--filter", default="", help="comma-separated substrings of case names to run")
    p.add_argument("--threads", type=int, default=None, help="threads for fastconv and PyTorch (default: all cores)")
    p.add_argument("--dtype", choices=["float32", "float64", "both"], default="float32")
    p.add_argument("--cases", help="JSON file with your own cases (a list of objects with Case's fields)")
    p.add_argument("--extra", action="store_true", help="also run the shapes outside the catalogue")
    p.add_argument("--compare", help="an earlier run's JSON: show fastconv's speed change per case")
    p.add_argument("--out", default="bench-results", help="folder for results.json and speedup.png")
    p.add_argument("--no-compile-time", action="store_true", help="skip the compile-time measurement")
    p.add_argument("--markdown", metavar="RESULTS_JSON", help="print an earlier run's results as a Markdown table, run nothing")
    return p.parse_args(argv)


def markdown(report) -> str:
    """An earlier run's results as a Markdown table (one row per case and dtype)."""
    rows = {}
    for r in report["results"]:
        rows.setdefault((r["case"], r["dtype"]), {})[r["mode"]] = r
    lines = [
        "| case | dtype | fwd vs torch | fwd+bwd vs torch | fwd+bwd ms (fastconv / torch) | fwd+bwd GFLOP/s or GB/s | % peak | vs reference | max error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (case, dtype), modes in rows.items():
        fwd, both = modes.get("fwd", {}), modes.get("fwdbwd", {})
        if both.get("status") == "error" or fwd.get("status") == "error":
            lines.append(f"| {case} | {dtype} | error | | | | | | |")
            continue
        t = both["times_s"]
        err = max(both.get("error_vs_reference", 0), both.get("error_vs_torch", 0), fwd.get("error_vs_reference", 0))
        rate = both.get("gflops", both.get("gbs"))
        ref = both.get("speedup_vs_reference")
        lines.append(
            f"| {case} | {dtype} | {fwd.get('speedup_vs_torch', float('nan')):.2f}x | {both.get('speedup_vs_torch', float('nan')):.2f}x "
            f"| {t['fastconv'] * 1e3:.2f} / {t.get('torch', float('nan')) * 1e3:.2f} | {rate:.1f} | {both['pct_peak']:.0f}% "
            f"| {f'{ref:.0f}x' if ref else '-'} | {err:.1e} |"
        )
    return "\n".join(lines)


def machine_info(threads):
    import numba
    import numpy as np

    from fastconv.catalogue import torch_module
    from fastconv.threads import cpu_count

    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    torch = torch_module()
    return {
        "cpu": model,
        "cores": cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": torch.__version__ if torch else None,
        "platform": platform.platform(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
    }


def measure_peaks(dtypes, quick):
    """The machine's sgemm/dgemm GFLOP/s (NumPy's BLAS) and copy bandwidth (GB/s,
    bytes read plus written), with fastconv's threads."""
    import numpy as np

    from fastconv.timing import interleaved_medians

    peaks = {}
    n = 1024 if quick else 2048
    for dtype in dtypes:
        a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
        t = interleaved_medians({"gemm": lambda a=a: a @ a}, rounds=5, budget_s=2)["gemm"]
        peaks[f"gemm_gflops_{dtype}"] = 2 * n**3 / t / 1e9
    from fastconv.kernels.memory import copy

    src = np.ones(16 << 20, dtype=np.float32)
    dst = np.empty_like(src)
    t = interleaved_medians({"copy": lambda: copy(src, dst)}, rounds=7, budget_s=2)["copy"]
    peaks["copy_gbs"] = 2 * src.nbytes / t / 1e9
    return peaks


def compile_times():
    """Seconds for fastconv.warmup() in a fresh process: cold (empty cache) and cached."""
    code = "import fastconv, sys; sys.stdout.write(repr(fastconv.warmup()))"
    result = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold", "cached"):
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            result[f"{label}_s"] = float(out.stdout.strip())
    return result


def max_relative_error(actual, expected):
    import numpy as np

    worst = 0.0
    for a, e in zip(actual, expected):
        a = np.asarray(a, dtype=np.float64)
        e = np.asarray(e, dtype=np.float64)
        if a.shape != e.shape:
            return float("inf")
        scale = max(float(np.max(np.abs(e))), 1e-30)
        worst = max(worst, float(np.max(np.abs(a - e))) / scale)
    return worst


def run_case(case, dtype, mode, quick, peaks):
    """Time and check one case; returns its JSON record."""
    import numpy as np

    from fastconv.catalogue import workload
    from fastconv.timing import interleaved_medians

    record = {"case": case.name, "op": case.op, "shape": case.__dict__, "dtype": dtype, "mode": mode}
    wl = workload(case, np.dtype(dtype).type)
    runs = {name: impl[mode] for name, impl in wl.runs.items()}
    try:
        results = {name: fn() for name, fn in runs.items()}
    except Exception as exc:  # a kernel that raises is an error row, not a crash of the whole run
        return record | {"status": "error", "message": f"{type(exc).__name__}: {exc}", "ok": False}
    tol = TOLERANCE[dtype]
    record["error_vs_reference"] = max_relative_error(results["fastconv"], results["reference"])
    if "torch" in results:
        record["error_vs_torch"] = max_relative_error(results["fastconv"], results["torch"])
    record["ok"] = bool(record["error_vs_reference"] <= tol and record.get("error_vs_torch", 0.0) <= tol)
    timed = {k: v for k, v in runs.items() if not (quick and k == "reference")}
    times = interleaved_medians(timed, rounds=3 if quick else 9, budget_s=1.0 if quick else 4.0)
    record["times_s"] = times
    ours = times["fastconv"]
    if "reference" in times:
        record["speedup_vs_reference"] = times["reference"] / ours
    if "torch" in times:
        record["speedup_vs_torch"] = times["torch"] / ours
    if case.op in ("conv", "convT"):
        flops = case.flops() * (3 if mode == "fwdbwd" else 1)
        record["gflops"] = flops / ours / 1e9
        record["pct_peak"] = 100 * record["gflops"] / peaks[f"gemm_gflops_{dtype}"]
    else:
        traffic = case.bytes_moved(np.dtype(dtype).itemsize) * (2.5 if mode == "fwdbwd" else 1)
        record["gbs"] = traffic / ours / 1e9
        record["pct_peak"] = 100 * record["gbs"] / peaks["copy_gbs"]
    record["status"] = "ok" if record["ok"] else "mismatch"
    return record


def render(records, compare, console):
    from rich.table import Table

    old = {}
    if compare:
        with open(compare) as f:
            old = {(r["case"], r["dtype"], r["mode"]): r for r in json.load(f)["results"]}
    table = Table(title="fastconv vs PyTorch CPU and the NumPy reference")
    for col, justify in [("case", "left"), ("dtype", "left"), ("mode", "left"), ("fastconv ms", "right"), ("torch ms", "right"),
                         ("vs torch", "right"), ("vs ref", "right"), ("GFLOP/s|GB/s", "right"), ("% peak", "right"),
                         ("err vs ref", "right"), ("err vs torch", "right")] + ([("vs old", "right")] if old else []):
        table.add_column(col, justify=justify)
    for r in records:
        if r["status"] == "error":
            table.add_row(r["case"], r["dtype"], r["mode"], f"[bold red]{r['message']}[/]", *[""] * (7 + bool(old)))
            continue
        t = r["times_s"]
        speed = r.get("speedup_vs_torch")
        colour = "green" if speed and speed >= 1 else "yellow"
        err_style = "green" if r["ok"] else "bold red"
        row = [
            r["case"], r["dtype"], r["mode"], f"{t['fastconv'] * 1e3:.2f}",
            f"{t['torch'] * 1e3:.2f}" if "torch" in t else "-",
            f"[{colour}]{speed:.2f}x[/]" if speed else "-",
            f"{r['speedup_vs_reference']:.1f}x" if "speedup_vs_reference" in r else "-",
            f"{r.get('gflops', r.get('gbs')):.1f}", f"{r['pct_peak']:.0f}%",
            f"[{err_style}]{r['error_vs_reference']:.1e}[/]",
            f"[{err_style}]{r['error_vs_torch']:.1e}[/]" if "error_vs_torch" in r else "-",
        ]
        if old:
            before = old.get((r["case"], r["dtype"], r["mode"]))
            row.append(f"{before['times_s']['fastconv'] / t['fastconv']:.2f}x" if before and "times_s" in before else "new")
        table.add_row(*row)
    console.print(table)


def geometric_means(records):
    import math

    groups = {}
    for r in records:
        if "speedup_vs_torch" in r:
            family = "pool" if r["op"] in ("max", "avg") else r["op"]
            groups.setdefault((family, r["dtype"], r["mode"]), []).append(r["speedup_vs_torch"])
    return {f"{f}/{d}/{m}": math.exp(sum(map(math.log, v)) / len(v)) for (f, d, m), v in groups.items()}


def chart(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if "speedup_vs_torch" in r]
    if not rows:
        return None
    labels = sorted({(r["case"], r["dtype"]) for r in rows}, key=lambda k: [r["case"] for r in rows].index(k[0]))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) + 2), 4.5))
    width = 0.4
    for i, mode in enumerate(("fwd", "fwdbwd")):
        values = [next((r["speedup_vs_torch"] for r in rows if (r["case"], r["dtype"], r["mode"]) == (*label, mode)), 0) for label in labels]
        ax.bar([j + (i - 0.5) * width for j in range(len(labels))], values, width, label="forward" if mode == "fwd" else "forward + backward")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([c if d == "float32" else f"{c} f64" for c, d in labels], rotation=45, ha="right")
    ax.set_ylabel("speedup vs PyTorch CPU (x, log scale)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def _earlier_run(path, option):
    """An earlier run's results.json, checked (ValueError naming the option and file)."""
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{option} {path}: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        raise ValueError(f"{option} {path}: not a results.json of python -m fastconv bench (no 'results' list)")
    return report


def same_threads(threads):
    """(threads, PyTorch's module or None): fastconv and PyTorch set to `threads`
    threads (None: all cores), PyTorch imported first: imported after Numba's OpenMP
    threads have started, its MKL paths (float64 convolutions) ran 15-25x slower here
    (see fastconv.torch). ValueError naming --threads for a count fastconv refuses."""
    import fastconv
    from fastconv.catalogue import torch_module
    from fastconv.threads import cpu_count

    threads = threads or cpu_count()
    torch = torch_module()
    try:
        fastconv.set_num_threads(threads)
    except ValueError as exc:
        raise ValueError(f"--threads: {exc}") from None
    if torch is not None:
        torch.set_num_threads(threads)
    return threads, torch


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.markdown:
            print(markdown(_earlier_run(args.markdown, "--markdown")))
            return 0
        if args.compare:
            _earlier_run(args.compare, "--compare")  # checked before hours of timing
        from fastconv import catalogue

        cases = catalogue.load_cases(args.cases) if args.cases else None
    except ValueError as exc:
        print(f"python -m fastconv bench: {exc}", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.progress import Progress

    import fastconv

    console = Console(width=max(150, Console().width))
    try:
        threads, _ = same_threads(args.threads)
    except ValueError as exc:
        print(f"python -m fastconv bench: {exc}", file=sys.stderr)
        return 2
    cases = catalogue.matching(cases or catalogue.CATALOGUE + (catalogue.EXTRA if args.extra else []), args.filter)
    if not cases:
        print(f"python -m fastconv bench: --filter {args.filter!r} matches no case", file=sys.stderr)
        return 2
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    compile_time = None if args.no_compile_time or args.quick else compile_times()
    try:
        fastconv.warmup(tuple(dtypes))
    except Exception as exc:  # the failing case shows as an error row below
        console.print(f"[bold red]warm-up failed: {type(exc).__name__}: {exc}[/]")
    peaks = measure_peaks(dtypes, args.quick)
    records = []
    jobs = [(c, d, m) for d in dtypes for c in cases for m in catalogue.MODES]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(jobs))
        for case, dtype, mode in jobs:
            progress.update(task, description=f"{case.name} {dtype} {mode}")
            records.append(run_case(case, dtype, mode, args.quick, peaks))
            progress.advance(task)
    render(records, args.compare, console)
    means = geometric_means(records)
    for key, value in means.items():
        console.print(f"geometric mean speedup vs PyTorch, {key}: {value:.2f}x")
    if compile_time:
        console.print(f"compile time (fastconv.warmup, both dtypes' kernels): cold {compile_time['cold_s']:.1f} s, from cache {compile_time['cached_s']:.1f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine_info(threads), "peaks": peaks, "compile_time": compile_time, "geometric_means": means,
        "settings": {"quick": args.quick, "dtypes": dtypes, "filter": args.filter}, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": records,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1, default=float))
    png = chart(records, out / "speedup.png")
    console.print(f"wrote {out / 'results.json'}" + (f" and {png}" if png else ""))
    bad = [r for r in records if not r["ok"]]
    if bad:
        console.print(f"[bold red]{len(bad)} case(s) failed their check: " + ", ".join(f"{r['case']} {r['dtype']} {r['mode']}" for r in bad))
        return 1
    return 0
