"""What the Numba backend's first call costs (the README's compile figures).

    python benchmarks/numba_compile_cost.py [--dtype float32 --dtype float64]

Runs, in fresh processes with an empty numba cache (a temporary
``NUMBA_CACHE_DIR``, so your own cache is left alone), a forward with tape,
a backward and a forward without tape on small shapes chosen to reach each
strategy the backend picks by itself in turn (packed rows, BLAS rows, packed
one-row blocks, the BLAS path; the hand-written product is only taken where
scipy's BLAS is not an OpenBLAS), and prints the seconds each one took: the
first call of a strategy compiles what it needs. Then it runs the same in a second process
on the now warm cache, where the first call only loads it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

# (label, T, B, I, H): the strategy each shape reaches with the default
# settings on two threads (the first four calls are below PARALLEL_MIN_MACS:
# one thread; the last, on two threads, compiles what the packed rows have
# not: the packed gradient products of a backward over T*B >= 384 rows).
STAGES = [
    ("packed rows (B=64, H=32)", 3, 64, 8, 32),
    ("BLAS rows (4 rows per thread, B=4, H=20)", 3, 4, 8, 20),
    ("packed rows, one-row block (B=1, H=32)", 3, 1, 8, 32),
    ("BLAS path (B=1, H=200)", 3, 1, 8, 200),
    ("packed gradient products (T=24, B=16, H=128)", 24, 16, 64, 128),
]

_CHILD = r"""
import json, sys, time
start = time.perf_counter()
import numpy as np
import polylstm
dtype = sys.argv[1]
stages = json.loads(sys.argv[2])
times = []
for label, T, B, I, H in stages:
    rng = np.random.default_rng(0)
    def f(*shape):
        return rng.standard_normal(shape).astype(dtype)
    t0 = time.perf_counter()
    out = polylstm.lstm_forward(f(T, B, I), f(4 * H, I), f(4 * H, H), f(4 * H),
                                keep_tape=True, backend="numba")
    polylstm.lstm_backward(out.tape, f(T, B, H))
    polylstm.lstm_forward(f(T, B, I), f(4 * H, I), f(4 * H, H), f(4 * H), backend="numba")
    times.append([label, time.perf_counter() - t0])
print(json.dumps({"stages": times, "total": time.perf_counter() - start}))
"""


def run(dtype: str, cache_dir: str) -> dict:
    """One child process; its stage times and total (seconds, with imports)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    done = subprocess.run([sys.executable, "-c", _CHILD, dtype, json.dumps(STAGES)],
                          env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", action="append", default=None,
                        choices=["float32", "float64"])
    args = parser.parse_args(argv)
    for dtype in args.dtype or ["float32", "float64"]:
        with tempfile.TemporaryDirectory(prefix="polylstm-numba-cache-") as cache_dir:
            for state in ("empty cache", "warm cache"):
                result = run(dtype, cache_dir)
                print(f"{dtype}, {state}: {result['total']:.1f} s in all (with imports)")
                for label, seconds in result["stages"]:
                    print(f"  {label}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
