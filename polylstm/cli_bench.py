"""``polylstm bench``: every backend (and PyTorch, ONNX Runtime) on the same problems.

For each shape (T, B, I, H), dtype and mode (forward, forward+backward), every
selected runner is first checked against the NumPy reference computed in
float64 on the same inputs, then timed; a runner that computes something else
is reported as wrong and never timed or ranked. The measuring is
:mod:`polylstm.benchmarking`'s (the same code the pytest-benchmark suite in
``benchmarks/`` uses); this module only selects, presents and saves.

Output: one table per shape and dtype, a row per runner, with the median
wall-clock time, GFLOP/s (matrix-product FLOPs, :meth:`Shape.flops`) and the
ratio to the fastest runner of that case (1.00 = fastest) for each mode.
``--json PATH`` saves every measurement; ``--plot PATH`` draws GFLOP/s per
runner and shape (needs matplotlib).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
from typing import Optional, Sequence

from . import benchmarking as bm

#: Runners left out unless named with --backends: the GPU kernels emulated on
#: the CPU are a correctness tool, and timing the emulation says nothing useful.
DEFAULT_EXCLUDED = {"cupy-emulated": "the CuPy kernels emulated on the CPU (a correctness tool)"}

MODE_TITLES = {"forward": "forward", "forward_backward": "forward+backward"}


# -- options ----------------------------------------------------------------------------

def parse_shape(text: str) -> bm.Shape:
    """``"T,B,I,H"`` (or ``TxBxIxH``) -> :class:`polylstm.benchmarking.Shape`."""
    parts = text.replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive integers T,B,I,H, got {text!r}")
    return bm.Shape(*values)


def parse_shape_or_label(text: str) -> bm.Shape:
    """A grid shape's label (``"T100-B16-I128-H128"``, see
    :data:`polylstm.benchmarking.SHAPES`) or any ``"T,B,I,H"``."""
    for shape in bm.SHAPES:
        if shape.label == text:
            return shape
    try:
        return parse_shape(text)
    except argparse.ArgumentTypeError as exc:
        labels = ", ".join(s.label for s in bm.SHAPES)
        raise argparse.ArgumentTypeError(f"{exc}, or a grid label ({labels})") from None


def _names(text: str) -> list:
    return [n.strip() for n in text.split(",") if n.strip()]


def add_parser(subparsers) -> None:
    """Add the ``bench`` subcommand to the ``polylstm`` command line."""
    p = subparsers.add_parser(
        "bench", help="compare every backend (and PyTorch, ONNX Runtime) on a grid of shapes",
        description="Check each backend against the NumPy reference, then time it: forward and "
                    "forward+backward on a grid of shapes. A backend that computes something else "
                    "is reported as wrong, never ranked.")
    p.add_argument("--backends", type=_names, default=None, metavar="A,B",
                   help="runners to measure (default: every available one except "
                        f"{', '.join(DEFAULT_EXCLUDED)}); see --list")
    p.add_argument("--shape", action="append", type=parse_shape, dest="shapes", metavar="T,B,I,H",
                   help="a problem size (repeatable; default: the project's grid, "
                        + "; ".join(f"{s.T},{s.B},{s.I},{s.H}" for s in bm.SHAPES) + ")")
    p.add_argument("--dtype", action="append", choices=bm.DTYPES, dest="dtypes",
                   help="float32 (default) and/or float64 (repeatable)")
    p.add_argument("--mode", action="append", choices=bm.MODES, dest="modes",
                   help="forward and/or forward_backward (repeatable; default both)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case (median reported; default 5)")
    p.add_argument("--min-time", type=float, default=bm.MIN_TIME_S, metavar="SECONDS",
                   help="keep timing a case past --repeats until its timed calls add up to SECONDS, per round: "
                        f"hundreds of calls for a sub-millisecond case (default {bm.MIN_TIME_S:g}; 0: exactly --repeats)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after the check (default 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="time every runner in N rounds, each starting with another runner, and take the median "
                        "over all rounds: on a shared machine, bursts of foreign load then hit every runner alike "
                        "(default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help=f"threads for PyTorch and ONNX Runtime (default: the CPUs available, {bm.default_threads()})")
    p.add_argument("--json", metavar="PATH", default=None, help="save every measurement as JSON")
    p.add_argument("--plot", metavar="PATH", default=None, help="save a GFLOP/s chart (PNG; needs matplotlib)")
    p.add_argument("--list", action="store_true", help="list the runners and whether they can run here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# -- runners ----------------------------------------------------------------------------

def all_runners() -> list:
    """Every runner benchmarking knows of, available or not: each registered
    polylstm backend (including those kept out of automatic selection, such as
    the ``torch`` example plugin), then the comparators (``pytorch``: torch.nn.LSTM
    called directly; ``onnxruntime``)."""
    import polylstm

    backends = [s.name for s in polylstm.available_backends() if not s.broken]
    comparators = [r.name for r in bm.list_runners(include_unavailable=True) if r.kind == "comparator"]
    return bm.list_runners(include_unavailable=True, names=backends + comparators)


def select_runners(names: Optional[Sequence[str]]):
    """The runners to measure, and the messages for those left out.

    names None: every available runner but :data:`DEFAULT_EXCLUDED`. Named
    runners that cannot run here are kept (reported as unavailable); an unknown
    name raises ValueError listing the known ones.
    """
    if names:
        return bm.list_runners(include_unavailable=True, names=list(dict.fromkeys(names))), []
    chosen, skipped = [], []
    for r in all_runners():
        if r.unavailable is not None:
            skipped.append(f"{r.name}: unavailable ({r.unavailable})")
        elif r.name in DEFAULT_EXCLUDED:
            skipped.append(f"{r.name}: left out by default, {DEFAULT_EXCLUDED[r.name]}; name it to time it")
        else:
            chosen.append(r)
    return chosen, skipped


# -- results ----------------------------------------------------------------------------

def rank(measurements: Sequence[bm.Measurement]) -> dict:
    """Ratio to the fastest and rank (1 = fastest) of every timed measurement,
    per case (shape, dtype, mode): ``{id(measurement): (ratio, rank)}``.
    Only status ``ok`` (checked, then timed) takes part."""
    cases: dict = {}
    for m in measurements:
        if m.status == "ok":
            cases.setdefault((m.shape, m.dtype, m.mode), []).append(m)
    ranking = {}
    for group in cases.values():
        group.sort(key=lambda m: m.median_s)
        fastest = group[0].median_s
        for position, m in enumerate(group, start=1):
            ranking[id(m)] = (m.median_s / fastest, position)
    return ranking


def _finite(value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def to_json(measurements: Sequence[bm.Measurement], runners: Sequence[bm.Runner], args) -> dict:
    """The saved record: environment, runners and one entry per measurement."""
    ranking = rank(measurements)
    from . import __version__

    results = []
    for m in measurements:
        ratio, position = ranking.get(id(m), (None, None))
        results.append({
            "runner": m.runner, "shape": dataclasses.asdict(m.shape), "mode": m.mode, "dtype": m.dtype,
            "status": m.status, "median_s": m.median_s, "times_s": list(m.times_s), "gflops": m.gflops,
            "flops": m.shape.flops(m.mode), "max_error": _finite(m.max_error),
            "tolerance": bm.TOLERANCES[m.dtype], "ratio_to_fastest": ratio, "rank": position,
            "message": m.message,
        })
    return {
        "polylstm_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(), "cpus_available": bm.default_threads()},
        "settings": {"repeats": args.repeats, "min_time_s": args.min_time, "warmup": args.warmup,
                     "rounds": args.rounds,
                     "threads": args.threads or bm.default_threads()},
        "runners": [{"name": r.name, "kind": r.kind, "version": r.version, "description": r.description,
                     "unavailable": r.unavailable} for r in runners],
        "results": results,
    }


def _format_rows(rows: list, right_from: int) -> list:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if i < right_from else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_tables(measurements: Sequence[bm.Measurement], modes: Sequence[str]) -> str:
    """One text table per (shape, dtype): a row per runner, fastest first by
    the first mode; for each mode the median ms, GFLOP/s and ratio to the
    fastest. A runner that was not timed shows its status (WRONG, ERROR, ...)
    and is explained under the table."""
    ranking = rank(measurements)
    blocks = []
    cases: dict = {}
    for m in measurements:
        cases.setdefault((m.shape, m.dtype), {}).setdefault(m.runner, {})[m.mode] = m
    for (shape, dtype), by_runner in cases.items():
        flops = ", ".join(f"{MODE_TITLES[mode]} {shape.flops(mode) / 1e9:.3g}" for mode in modes)
        title = f"T={shape.T} B={shape.B} I={shape.I} H={shape.H}  {dtype}  (GFLOP per call: {flops})"
        head = ["backend"]
        for mode in modes:
            label = MODE_TITLES[mode]
            head += [f"{label} ms", "GFLOP/s", "x fastest"]

        def order(item):
            name, per_mode = item
            first = per_mode.get(modes[0])
            timed = first is not None and first.status == "ok"
            return (not timed, first.median_s if timed else 0.0, name)

        rows, notes = [head], []
        for name, per_mode in sorted(by_runner.items(), key=order):
            row = [name]
            for mode in modes:
                m = per_mode.get(mode)
                if m is None:
                    row += ["-", "", ""]
                elif m.status == "ok":
                    ratio, position = ranking[id(m)]
                    row += [f"{m.median_s * 1e3:.3f}", f"{m.gflops:.3g}", f"{ratio:.2f}" + (" *" if position == 1 else "  ")]
                else:
                    row += [m.status.upper(), "", ""]
                    if m.status != "unsupported":
                        notes.append(f"  {name} {MODE_TITLES[mode]}: {m.status}"
                                     + (" (checked against the reference, not timed, not ranked)" if m.status == "wrong" else "")
                                     + (f": {m.message}" if m.message else ""))
            rows.append(row)
        blocks.append("\n".join([title, *_format_rows(rows, right_from=1), *notes]))
    return "\n\n".join(blocks) + "\n* fastest of the case; x fastest = median / fastest median"


def plot(measurements: Sequence[bm.Measurement], modes: Sequence[str], path: str) -> None:
    """GFLOP/s bars: one panel per mode (and dtype), a group per shape, a bar
    per timed runner. Wrong or failed runners have no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = list(dict.fromkeys(m.dtype for m in measurements))
    shapes = list(dict.fromkeys(m.shape for m in measurements))
    runners = list(dict.fromkeys(m.runner for m in measurements))
    panels = [(mode, dtype) for dtype in dtypes for mode in modes]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 1.6 * len(shapes) * max(1, len(runners)) / 3), 3.2 * len(panels)),
                             squeeze=False, constrained_layout=True)
    width = 0.8 / max(1, len(runners))
    for ax, (mode, dtype) in zip(axes[:, 0], panels):
        for k, name in enumerate(runners):
            xs, ys = [], []
            for j, shape in enumerate(shapes):
                for m in measurements:
                    if (m.runner, m.shape, m.mode, m.dtype, m.status) == (name, shape, mode, dtype, "ok"):
                        xs.append(j + (k - (len(runners) - 1) / 2) * width)
                        ys.append(m.gflops)
            ax.bar(xs, ys, width=width, label=name)
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels([f"T{s.T} B{s.B}\nI{s.I} H{s.H}" for s in shapes], fontsize=8)
        # Shapes differ in size by orders of magnitude: a log axis keeps small ones visible.
        ax.set_yscale("log")
        ax.set_ylabel("GFLOP/s (log)")
        ax.set_title(f"{MODE_TITLES[mode]}, {dtype} (higher is better)", fontsize=10)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside upper center", fontsize=8,
               ncol=min(6, len(runners)))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command ------------------------------------------------------------------------

def _progress_bar(total: int, disabled: bool):
    """A tqdm bar on stderr (None when disabled or tqdm is missing)."""
    if disabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True)


def run(args, out=None) -> int:
    """Run ``polylstm bench``. Exit code 0 when every measured runner was
    correct, 1 when one was wrong or raised, 2 on a usage error."""
    out = out or sys.stdout
    if args.list:
        for r in all_runners():
            state = "available" if r.unavailable is None else f"unavailable: {r.unavailable}"
            note = f"  [left out by default: {DEFAULT_EXCLUDED[r.name]}]" if r.name in DEFAULT_EXCLUDED else ""
            print(f"{r.name:14} {r.kind:10} {state:28} {r.version or '-':22} {r.description}{note}", file=out)
        return 0
    if (args.repeats < 1 or args.rounds < 1 or args.warmup < 0 or not args.min_time >= 0
            or (args.threads is not None and args.threads < 1)):
        print("polylstm bench: --repeats, --rounds and --threads must be >= 1, --warmup and --min-time >= 0",
              file=sys.stderr)
        return 2
    try:
        runners, skipped = select_runners(args.backends)
    except ValueError as exc:
        print(f"polylstm bench: {exc}", file=sys.stderr)
        return 2
    if not runners:
        print("polylstm bench: no runner to measure", file=sys.stderr)
        return 2
    shapes = args.shapes or list(bm.SHAPES)
    dtypes = list(dict.fromkeys(args.dtypes or ["float32"]))
    modes = [m for m in bm.MODES if m in (args.modes or bm.MODES)]

    threads = args.threads or bm.default_threads()
    print(f"polylstm bench: {', '.join(r.name for r in runners)}; {len(shapes)} shape(s), "
          f"{', '.join(dtypes)}, {', '.join(MODE_TITLES[m] for m in modes)}; median of {args.repeats} "
          + (f"or more calls filling {args.min_time:g} s " if args.min_time > 0 else "")
          + f"after {args.warmup} warm-up" + (f", x {args.rounds} interleaved rounds" if args.rounds > 1 else "")
          + f", {threads} thread(s); each result checked against the reference "
          f"(tolerance {', '.join(f'{d} {bm.TOLERANCES[d]:g}' for d in dtypes)}) before it is timed", file=out)
    for line in skipped:
        print(f"  skipped {line}", file=out)
    out.flush()

    total = len(shapes) * len(dtypes) * sum(1 for mode in modes for r in runners if mode in r.modes)
    bar = _progress_bar(total, args.no_progress)

    def progress(m: bm.Measurement) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{m.runner} {m.shape.label} {m.mode} {m.dtype}: {m.status}", refresh=False)
            bar.update(1)

    measurements = []
    try:
        for dtype in dtypes:
            measurements += bm.compare(runners, shapes, modes, dtype, args.repeats, args.warmup,
                                       threads=threads, rounds=args.rounds, progress=progress,
                                       min_time_s=args.min_time)
    finally:
        if bar is not None:
            bar.close()

    print("", file=out)
    print(format_tables(measurements, modes), file=out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(to_json(measurements, runners, args), f, indent=1)
        print(f"results saved to {os.path.abspath(args.json)}", file=out)
    if args.plot:
        plot(measurements, modes, args.plot)
        print(f"chart saved to {os.path.abspath(args.plot)}", file=out)
    bad = [m for m in measurements if m.status in ("wrong", "error")]
    if bad:
        print(f"\n{len(bad)} measurement(s) not ranked: "
              + ", ".join(sorted({f'{m.runner} ({m.status})' for m in bad})), file=out)
        return 1
    return 0
