"""Interleaved A/B of the Numba backend: the working tree against a git revision.

    python benchmarks/numba_ab.py --against 3d43509 --shape 200,1,32,64 --shape 100,16,128,128
        [--mode forward --mode forward_backward --mode backward] [--dtype float32] [--rounds 12]

On this shared 2-core VM the speed of one and the same call drifts by tens of
percent within minutes, so a change is judged by timing both versions in one
process, alternating which runs first, and comparing medians. The old
version is ``backends/numba`` at ``--against``, extracted with ``git show``
into a private package (``polylstm_numba_ab``, under the temporary
directory, one per revision, so that numba's cache serves a second run);
the new one is the installed ``polylstm_numba`` (the working tree for an
editable install). Both run ``NumbaBackend().forward`` / ``.backward`` on
``polylstm.benchmarking.make_inputs`` with default settings; the table gives
each version's median ms and new / old, and the largest difference between
their results (0 when the change keeps the bits).
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from polylstm import benchmarking as bm
from polylstm.backend import Tape
from polylstm.cli_bench import parse_shape

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "polylstm_numba_ab"
MODES = ("forward", "forward_backward", "backward")


def import_revision(revision: str):
    """``backends/numba`` at ``revision`` as the package ``polylstm_numba_ab``;
    returns its ``_backend`` module."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout.strip()
    root = os.path.join(tempfile.gettempdir(), f"polylstm-numba-ab-{sha[:12]}")
    target = os.path.join(root, PACKAGE)
    os.makedirs(target, exist_ok=True)
    names = subprocess.run(["git", "ls-tree", "--name-only", sha, "backends/numba/"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.split()
    for path in names:
        if path.endswith(".py"):
            source = subprocess.run(["git", "show", f"{sha}:{path}"], cwd=REPO, check=True,
                                    capture_output=True).stdout
            destination = os.path.join(target, os.path.basename(path))
            # Rewritten only when it changed: numba's cache checks the file's time stamp.
            if _read(destination) != source:
                with open(destination, "wb") as handle:
                    handle.write(source)
    sys.path.insert(0, root)
    return importlib.import_module(f"{PACKAGE}._backend")


def _read(path: str):
    """The bytes of ``path``, or None when there is no such file."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def call(backend, inputs: bm.Inputs, mode: str, tape=None):
    """One call in ``mode``; returns the arrays compared between versions."""
    x, w_ih, w_hh, b, h0, c0 = (inputs.x, inputs.w_ih, inputs.w_hh, inputs.b, inputs.h0, inputs.c0)
    if mode == "forward":
        return [backend.forward(x, w_ih, w_hh, b, h0, c0, None, None, False, False).y]
    if mode == "forward_backward":
        tape = record(backend, inputs)
    zeros = np.zeros_like(h0)
    grads = backend.backward(tape, inputs.dy, zeros, zeros)
    return [grads.dx, grads.dw_ih, grads.dw_hh]


def record(backend, inputs: bm.Inputs) -> Tape:
    """A forward with tape, as ``polylstm.lstm_forward(keep_tape=True)`` records it."""
    x, w_ih, w_hh, b, h0, c0 = (inputs.x, inputs.w_ih, inputs.w_hh, inputs.b, inputs.h0, inputs.c0)
    out = backend.forward(x, w_ih, w_hh, b, h0, c0, None, None, False, True)
    return Tape(backend="numba", x=x, w_ih=w_ih, w_hh=w_hh, h0=h0, c0=c0, peephole=None,
                lengths=None, reverse=False, y=out.y, gates=out.gates, c=out.c)


def compare(old, new, inputs: bm.Inputs, mode: str, rounds: int):
    """(old median ms, new median ms, largest difference of the results)."""
    tapes = {"old": record(old, inputs), "new": record(new, inputs)} if mode == "backward" else {}
    backends = {"old": old, "new": new}
    results = {name: call(backend, inputs, mode, tapes.get(name)) for name, backend in backends.items()}
    difference = max(float(np.max(np.abs(a.astype(np.float64) - b)))
                     for a, b in zip(results["old"], results["new"]))
    start = time.perf_counter()
    call(new, inputs, mode, tapes.get("new"))
    calls = max(1, int(0.05 / max(time.perf_counter() - start, 1e-6)))  # ~50 ms per timing
    times = {"old": [], "new": []}
    for r in range(rounds):
        for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
            # The other version's pool threads spin for up to a millisecond
            # after its last call (``_pool.LINGER_NS``): let them stop first.
            time.sleep(0.003)
            start = time.perf_counter()
            for _ in range(calls):
                call(backends[name], inputs, mode, tapes.get(name))
            times[name].append((time.perf_counter() - start) / calls * 1e3)
    return float(np.median(times["old"])), float(np.median(times["new"])), difference


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD", help="git revision of the old version (default HEAD)")
    parser.add_argument("--shape", action="append", type=parse_shape, default=None,
                        help="T,B,I,H (repeatable; default: the issue's grid)")
    parser.add_argument("--mode", action="append", choices=MODES, default=None,
                        help="repeatable; default: forward and forward_backward")
    parser.add_argument("--dtype", default="float32", choices=bm.DTYPES)
    parser.add_argument("--rounds", type=int, default=12, help="timed rounds per version")
    args = parser.parse_args(argv)
    old_module = import_revision(args.against)
    new_module = importlib.import_module("polylstm_numba._backend")
    print(f"old: backends/numba at {args.against}; new: {os.path.dirname(new_module.__file__)}")
    print("| dtype | T, B, I, H | mode | old ms | new ms | new / old | max difference |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shape or list(bm.SHAPES):
        inputs = bm.make_inputs(shape, args.dtype)
        for mode in args.mode or ["forward", "forward_backward"]:
            old_ms, new_ms, difference = compare(old_module.NumbaBackend(), new_module.NumbaBackend(),
                                                 inputs, mode, args.rounds)
            print(f"| {args.dtype} | {shape.T}, {shape.B}, {shape.I}, {shape.H} | {mode} | {old_ms:.4f} "
                  f"| {new_ms:.4f} | {new_ms / old_ms:.3f} | {difference:.3g} |", flush=True)


if __name__ == "__main__":
    main()
