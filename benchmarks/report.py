"""Print the benchmark grid as a Markdown table (what docs/benchmarks.md records).

    python benchmarks/report.py [--runner numba --runner pytorch ...] [--shape LABEL|T,B,I,H ...]
                                [--mode forward ...] [--dtype float32] [--repeats 3] [--rounds 3]
                                [--min-time 0.1]

Uses the same functions as the pytest-benchmark suite (polylstm.benchmarking):
every runner is checked against the NumPy reference before it is timed, the
runners of one case are timed in interleaved rounds on the same inputs
(medians over all rounds), and the table gives medians,
GFLOP/s, the share of the measured GEMM ceiling (the fastest 2048^3 product,
measured before and after the runs) and ratios to PyTorch and ONNX Runtime. A
header lists the machine and versions.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

from polylstm import benchmarking as bm
from polylstm.cli_bench import parse_shape_or_label


def _versions(runners):
    import numpy

    parts = [f"python {platform.python_version()}", f"numpy {numpy.__version__}"]
    for r in runners:
        if r.version:
            parts.append(f"{r.name}: {r.version}")
    return ", ".join(parts)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runner", action="append", default=None)
    parser.add_argument("--shape", action="append", default=None, type=parse_shape_or_label,
                        help="a grid shape's label (T100-B16-I128-H128) or any T,B,I,H (repeatable; "
                             "default: the grid)")
    parser.add_argument("--mode", action="append", default=None, choices=bm.MODES)
    parser.add_argument("--dtype", default="float32", choices=bm.DTYPES)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per runner and round")
    parser.add_argument("--min-time", type=float, default=bm.MIN_TIME_S,
                        help="seconds of timed calls per runner and round, at least (0: exactly --repeats)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per case, runners interleaved (see benchmarking.compare)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)

    shapes = args.shape or list(bm.SHAPES)
    runners = bm.list_runners(names=args.runner)
    threads = args.threads or bm.default_threads()

    ceiling = bm.measure_gemm_ceiling(args.dtype)
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, {threads} threads per runner")
    print(f"versions: {_versions(runners)}")
    print(f"{args.dtype} GEMM ceiling (NumPy BLAS, 2048^3): {ceiling:.1f} GFLOP/s")
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}", flush=True)

    def progress(m):
        median = f"{m.median_s * 1e3:.3f} ms" if m.median_s else m.status
        print(f"  {m.shape.label} {m.mode} {m.runner}: {median} {m.message}", file=sys.stderr,
              flush=True)

    results = bm.compare(runners, shapes, args.mode or bm.MODES, args.dtype, args.repeats,
                         threads=threads, rounds=args.rounds, progress=progress,
                         min_time_s=args.min_time)
    # Measured again after the runs: the higher of the two is the ceiling.
    after = bm.measure_gemm_ceiling(args.dtype)
    print(f"{args.dtype} GEMM ceiling after the runs: {after:.1f} GFLOP/s")
    print()
    print(bm.format_table(results, ceiling_gflops=max(ceiling, after)))


if __name__ == "__main__":
    main()
