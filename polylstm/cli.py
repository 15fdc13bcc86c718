"""The ``polylstm`` command line.

    polylstm backends            every registered backend: available or why not
    polylstm check NAME          run the conformance kit against a backend
    polylstm demo                train an LSTM on the adding problem
    polylstm bench               compare every backend on a grid of shapes (polylstm.cli_bench)

One function per command (``cmd_<name>``), each registered by an
``add_<name>_parser`` function; a command may live in its own module
(``bench`` in :mod:`polylstm.cli_bench`). Exit codes: 0 success, 1 a check
failed, 2 a usage or environment error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

from .errors import PolyLSTMError


def _print_table(rows: list, headers: list, out) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    print(line.rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


# --------------------------------------------------------------------------- backends

def add_backends_parser(sub) -> None:
    p = sub.add_parser("backends", help="list the registered backends and whether they can run here",
                       description="List every registered backend: whether it can run here (and why not), its "
                                   "priority for automatic selection, the array types it computes on, its "
                                   "version and the plugin that registered it. Plugins that failed to load "
                                   "are listed as broken, with their error.")
    p.add_argument("--json", action="store_true", help="print the records as JSON instead of a table")
    p.set_defaults(func=cmd_backends)


def cmd_backends(args, out=None) -> int:
    out = out or sys.stdout
    import polylstm
    from ._registry import REGISTRY

    records = polylstm.available_backends()
    if args.json:
        print(json.dumps([{"name": r.name, "available": r.available, "reason": r.reason, "priority": r.priority,
                           "array_types": list(r.array_types), "auto_select": r.auto_select,
                           "version": r.version, "description": r.description, "source": r.source,
                           "broken": r.broken} for r in records], indent=2), file=out)
        return 0
    # Which backend automatic selection picks for each array type (rule 5-6 of the selection order).
    defaults = {}
    for kind in sorted({k for r in records if not r.broken for k in r.array_types}):
        picked = REGISTRY.candidates(kind)
        if picked:
            defaults.setdefault(picked[0], []).append(kind)
    rows = []
    for r in sorted(records, key=lambda r: (r.broken, not r.available, -r.priority, r.name)):
        if r.broken:
            status = "broken"
        elif r.available:
            status = "available"
        else:
            status = "unavailable"
        note = ""
        if r.name in defaults and not r.broken:
            note = "default for " + ", ".join({"numpy": "NumPy", "cupy": "CuPy"}.get(k, k)
                                              for k in defaults[r.name]) + " arrays"
        elif not r.auto_select and not r.broken:
            note = "used only when named"
        rows.append([r.name, status, r.priority if not r.broken else "-", ",".join(r.array_types) or "-",
                     r.version or "-", note])
    _print_table(rows, ["NAME", "STATUS", "PRIORITY", "ARRAYS", "VERSION", "NOTE"], out)
    print("", file=out)
    for r in sorted(records, key=lambda r: r.name):
        detail = f"  {r.name}: from {r.source}"
        if r.description:
            detail += f"\n      {r.description}"
        if r.reason:
            reason = r.reason.strip().replace("\n", "\n      ")
            detail += f"\n      {'error' if r.broken else 'why unavailable'}: {reason}"
        print(detail, file=out)
    return 0


# --------------------------------------------------------------------------- check

def add_check_parser(sub) -> None:
    p = sub.add_parser("check", help="run the conformance kit against a backend",
                       description="Check a backend against the NumPy reference with polylstm's conformance "
                                   "kit (polylstm.testing): forward, backward, lengths, reverse, peepholes, "
                                   "dtypes, input immutability, determinism. Prints a pass/fail table and "
                                   "exits 1 if any check fails.")
    p.add_argument("name", help="backend name (see `polylstm backends`)")
    p.add_argument("--dtype", action="append", choices=["float32", "float64"],
                   help="check only this dtype (repeatable; default both)")
    p.add_argument("--only", action="append", metavar="CHECK",
                   help="run only this check (repeatable; see --list)")
    p.add_argument("--expect-fail", action="append", default=[], metavar="KEY=REASON",
                   help="declare an expected failure by check name, capability or dtype (repeatable)")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="print each failure's full message")
    p.set_defaults(func=cmd_check)


def cmd_check(args, out=None) -> int:
    out = out or sys.stdout
    from ._registry import REGISTRY
    from .testing import CHECKS, run_conformance

    if args.list:
        _print_table([[c.name, ",".join(sorted(c.requires)) or "-", c.doc] for c in CHECKS.values()],
                     ["CHECK", "REQUIRES", "WHAT"], out)
        return 0
    unknown = [c for c in args.only or () if c not in CHECKS]
    if unknown:
        print(f"polylstm check: unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    expected = {}
    for item in args.expect_fail:
        key, sep, reason = item.partition("=")
        if not sep or not key:
            print(f"polylstm check: --expect-fail expects KEY=REASON, got {item!r}", file=sys.stderr)
            return 2
        expected[key] = reason
    backend = REGISTRY.get(args.name)  # an unknown or unavailable backend fails here, with the reason
    # A capability the backend does not announce is an expected failure: the
    # kit then proves the backend refuses it cleanly instead of computing garbage.
    from .backend import ALL_CAPABILITIES
    for capability in sorted(ALL_CAPABILITIES - set(backend.capabilities)):
        expected.setdefault(capability, f"backend {args.name!r} does not announce {capability}")
    dtypes = tuple(args.dtype or ("float32", "float64"))
    print(f"conformance of backend {args.name!r} against the NumPy reference", file=out)
    start = time.perf_counter()
    results = run_conformance(args.name, dtypes=dtypes, checks=args.only, expected_failures=expected)
    rows = []
    for r in results:
        message = r.message if args.verbose else r.message.splitlines()[0][:100] if r.message else ""
        rows.append([r.check, r.dtype, r.status.upper(), f"{r.seconds:.2f}s", message])
    _print_table(rows, ["CHECK", "DTYPE", "RESULT", "TIME", "DETAIL"], out)
    failed = [r for r in results if not r.ok]
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "xfail", "xpass")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    elapsed = time.perf_counter() - start
    if failed:
        print(f"\nFAILED: {summary} ({elapsed:.1f}s)", file=out)
        return 1
    print(f"\nOK: {summary} ({elapsed:.1f}s)", file=out)
    return 0


# --------------------------------------------------------------------------- demo

def add_demo_parser(sub) -> None:
    from .demo import DemoConfig

    d = DemoConfig()
    p = sub.add_parser("demo", help="train an LSTM on the adding problem and plot its gates",
                       description="Train an LSTM on the adding problem (Hochreiter & Schmidhuber 1997): "
                                   "sequences of (value, marker) pairs with two marked values; the target is "
                                   "their sum. Always answering 1 scores MSE 1/6 ~ 0.167. Prints a progress "
                                   "bar and a verdict, and saves a figure of the loss curve and the gates "
                                   "(i, f, g, o, c) over one test sequence (needs matplotlib).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="sequence length T")
    p.add_argument("--hidden-size", type=int, default=d.hidden_size, help="LSTM hidden size H")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps (one batch each)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per batch")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--clip", type=float, default=d.clip, help="gradient-norm clipping threshold")
    p.add_argument("--backend", default=None, help="backend name (default: the best available)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for data and initialisation")
    p.add_argument("--test-size", type=int, default=d.test_size, help="test sequences")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between test evaluations")
    p.add_argument("--baseline", action="store_true", help="also train a plain tanh RNN the same way")
    p.add_argument("--output", default="adding-demo.png", help="where to save the figure (PNG)")
    p.add_argument("--no-plot", action="store_true", help="do not save a figure")
    p.add_argument("--save-model", metavar="PATH", default=None, help="save the trained LSTM (.npz)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)


def _tqdm_factory(disabled: bool):
    if disabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None

    def make(name, total):
        return tqdm(total=total, desc=f"{name:>8}", unit="step", dynamic_ncols=True, leave=True)

    return make


def cmd_demo(args, out=None) -> int:
    out = out or sys.stdout
    from .demo import DemoConfig, plot, train_adding, verdict

    config = DemoConfig(seq_len=args.seq_len, hidden_size=args.hidden_size, steps=args.steps,
                        batch_size=args.batch_size, lr=args.lr, clip=args.clip, backend=args.backend,
                        seed=args.seed, test_size=args.test_size, eval_every=args.eval_every,
                        baseline=args.baseline)
    config.validate()
    print(f"adding problem: T={config.seq_len}, hidden {config.hidden_size}, {config.steps} steps of "
          f"{config.batch_size}, Adam lr {config.lr}, clip {config.clip}, seed {config.seed}", file=out)
    start = time.perf_counter()
    result = train_adding(config, progress=_tqdm_factory(args.no_progress))
    elapsed = time.perf_counter() - start
    print(f"backend {result.backend}: LSTM trained in {result.lstm.seconds:.1f}s"
          + (f", tanh RNN in {result.baseline.seconds:.1f}s" if result.baseline else "")
          + f" ({elapsed:.1f}s in all)", file=out)
    print(verdict(result), file=out)
    if args.save_model:
        print(f"model saved to {result.model.save(args.save_model)}", file=out)
    if not args.no_plot:
        try:
            path = plot(result, args.output)
        except ImportError:
            print("figure skipped: matplotlib is not installed; "
                  "`pip install 'polylstm[plot]'` (or matplotlib) to get it", file=out)
        else:
            print(f"figure saved to {path}: loss curves and gates i, f, g, o, c over a test sequence", file=out)
    return 0


# --------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="polylstm",
        description="LSTM forward and backpropagation through time on interchangeable backends.")
    parser.add_argument("--version", action="version", version=f"polylstm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from .cli_bench import add_parser as add_bench_parser

    for add in (add_backends_parser, add_check_parser, add_demo_parser, add_bench_parser):
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except PolyLSTMError as exc:
        print(f"polylstm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`polylstm backends | head`): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
