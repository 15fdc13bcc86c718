#!/usr/bin/env bash
# One-call GPU check of polylstm's CuPy backend, for a machine with an NVIDIA
# GPU, CuPy, PyTorch and pytest (e.g. a lent device machine; nothing is
# downloaded). From the repository root:
#
#     scripts/gpu_check.sh [OUTDIR]        # OUTDIR defaults to $OUT, else gpu-results
#
# 1. environment: nvidia-smi, versions                       -> OUTDIR/env.txt
# 2. installs this checkout (pip -e, no deps, no network)
# 3. the CuPy backend's tests on the real device, then again its
#    no-GPU checks (compile, emulation, ASan)                -> OUTDIR/pytest-cupy.txt, .xml
# 4. GPU benchmarks, cupy vs PyTorch cuDNN (strict fp32)     -> OUTDIR/gpu-bench.json, .md
#
# Each phase has a time limit (seconds; override by environment) so that the
# whole run fits one 10-minute device command:
#     GPU_CHECK_TEST_TIMEOUT (default 240), GPU_CHECK_BENCH_TIMEOUT (default 300).
# GPU_CHECK_BENCH_ARGS passes extra options to scripts/gpu_bench.py
# (e.g. "--shape 100,64,256,256 --repeats 20"); GPU_CHECK_SKIP_INSTALL=1 skips
# step 2 where polylstm is installed already; PYTHON picks the interpreter;
# POLYLSTM_REQUIRE_GPU=0 lets the GPU tests skip (a dry run without a GPU).
# Exit status: 0 when every phase passed, else the first failing phase's.
set -uo pipefail

cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# On the machine lent for this check, a missing GPU must fail, not skip.
export POLYLSTM_REQUIRE_GPU=${POLYLSTM_REQUIRE_GPU:-1}
status=0
note() { echo "== $*" | tee -a "$out/env.txt"; }

note "gpu_check $(date -u +%FT%TZ) in $(pwd), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
{ nvidia-smi || echo "nvidia-smi failed"; } >>"$out/env.txt" 2>&1
"$py" - >>"$out/env.txt" 2>&1 <<'PY'
import importlib.metadata as md, platform, sys
print("python", sys.version.split()[0], platform.machine())
for dist in ("numpy", "cupy-cuda13x", "cupy-cuda12x", "torch", "pluggy", "pytest", "nvidia-cuda-nvrtc"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        pass
try:
    import cupy
    print("cupy.is_available():", cupy.is_available())
    if cupy.is_available():
        props = cupy.cuda.runtime.getDeviceProperties(0)
        print("device:", props["name"].decode(), "sm_%d%d" % (props["major"], props["minor"]))
except Exception as exc:
    print("cupy:", type(exc).__name__, exc)
PY

if [ -z "${GPU_CHECK_SKIP_INSTALL:-}" ]; then
    note "install (editable, no deps, no build isolation)"
    if ! "$py" -m pip install -q --no-deps --no-build-isolation -e . >>"$out/env.txt" 2>&1; then
        note "pip install failed; see above"
        exit 2
    fi
fi
"$py" -c "import polylstm; [print(s.name, s.available, s.reason or '') for s in polylstm.available_backends()]" \
    2>&1 | tee -a "$out/env.txt"

note "tests: CuPy backend on the device, then its no-GPU checks"
timeout "${GPU_CHECK_TEST_TIMEOUT:-240}" "$py" -m pytest -q -rs -p no:cacheprovider \
    --junitxml="$out/pytest-cupy.xml" \
    tests/test_cupy_gpu.py tests/test_cupy_compile.py tests/test_cupy_emulated.py \
    tests/test_conformance_cupy_emulated.py tests/test_cupy_asan.py \
    2>&1 | tee "$out/pytest-cupy.txt"
rc=${PIPESTATUS[0]}
note "tests exit status $rc"
[ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc

note "benchmarks: cupy vs pytorch-cudnn"
# shellcheck disable=SC2086  # word splitting of the extra options is intended
timeout "${GPU_CHECK_BENCH_TIMEOUT:-300}" "$py" scripts/gpu_bench.py --out "$out" ${GPU_CHECK_BENCH_ARGS:-} \
    2>&1 | tee "$out/gpu-bench.txt"
rc=${PIPESTATUS[0]}
note "benchmarks exit status $rc"
[ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc

note "done, status $status; results in $out"
exit "$status"
