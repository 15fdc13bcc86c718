#!/usr/bin/env python
"""GPU benchmarks: polylstm's ``cupy`` backend against PyTorch's cuDNN LSTM.

Runs through :mod:`polylstm.benchmarking` -- the same check-then-time code as
``polylstm bench`` -- with the comparator ``pytorch-cudnn`` (``torch.nn.LSTM``
on the CUDA device, i.e. cuDNN) that the module builds when it is named. Every runner is first checked against the
float64 NumPy reference on the same inputs; a wrong one is never timed.
Both sides compute in strict float32 (TF32 is switched off in PyTorch; CuPy
does not use it unless CUPY_TF32=1), and each timed call ends with a device
synchronisation.

Usage (on a machine with a GPU, CuPy and PyTorch)::

    python scripts/gpu_bench.py --out gpu-results            # the project's shape grid
    python scripts/gpu_bench.py --shape 100,64,256,256 --repeats 20
    python scripts/gpu_bench.py --runners cupy-emulated --shape 5,2,3,4   # plumbing dry run

Writes ``<out>/gpu-bench.json`` (every measurement) and ``<out>/gpu-bench.md``
(a Markdown table with ratios to pytorch-cudnn; < 1 means faster than cuDNN).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
from pathlib import Path


from polylstm import benchmarking as bm


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runners", default="cupy,pytorch-cudnn",
                        help="comma-separated runners: polylstm backends and/or pytorch-cudnn")
    parser.add_argument("--shape", action="append", dest="shapes", metavar="T,B,I,H",
                        help="problem size (repeatable; default: polylstm.benchmarking.SHAPES)")
    parser.add_argument("--dtype", default="float32", choices=bm.DTYPES)
    parser.add_argument("--mode", action="append", dest="modes", choices=bm.MODES)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default="gpu-results", help="directory for gpu-bench.json/.md")
    parser.add_argument("--require", action="store_true",
                        default=os.environ.get("POLYLSTM_REQUIRE_GPU", "") not in ("", "0"),
                        help="exit 1 when a runner is unavailable (default when POLYLSTM_REQUIRE_GPU=1)")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.runners.split(",") if n.strip()]
    shapes = [bm.Shape(*(int(v) for v in s.split(","))) for s in args.shapes] if args.shapes else list(bm.SHAPES)
    modes = args.modes or list(bm.MODES)
    runners = bm.list_runners(include_unavailable=True, names=names)
    for r in runners:
        print(f"# {r.name}: {r.version or ''} {'UNAVAILABLE: ' + r.unavailable if r.unavailable else ''}",
              flush=True)

    def progress(m: bm.Measurement) -> None:
        timing = f"{m.median_s * 1e3:9.3f} ms {m.gflops:8.1f} GFLOP/s" if m.status == "ok" else m.message
        err = f" err {m.max_error:.2e}" if m.max_error is not None else ""
        print(f"{m.shape.label:>22} {m.mode:>16} {m.runner:>14} {m.status:>11} {timing}{err}", flush=True)

    measurements = bm.compare(runners, shapes, modes, args.dtype, args.repeats, args.warmup,
                              progress=progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "dtype": args.dtype,
        "runners": [{"name": r.name, "version": r.version, "unavailable": r.unavailable} for r in runners],
        "measurements": [dataclasses.asdict(m) for m in measurements],
    }
    (out / "gpu-bench.json").write_text(json.dumps(record, indent=1, default=str))
    table = bm.format_table(measurements, baselines=("pytorch-cudnn",))
    (out / "gpu-bench.md").write_text(f"GPU benchmarks ({args.dtype}), {record['date']}\n\n{table}\n")
    print(table)
    failing = ("wrong", "error", "unavailable") if args.require else ("wrong", "error")
    return 1 if any(m.status in failing for m in measurements) else 0


if __name__ == "__main__":
    sys.exit(main())
