"""Compile check of the CuPy backend's kernels for the GPUs we ship, without a GPU.

* NVRTC -- the compiler cupy.RawModule uses -- is the check of record: every
  .cu file, both dtypes, PTX and cubin for sm_80 and sm_90, with RawModule's
  options, on the exact source text the backend hands to RawModule.
* nvcc is a second opinion (warnings as errors; ptxas flags double-precision
  use in float32 modules).
* g++ builds the CPU emulation with -Wall -Wextra -Werror (incl.
  -Wdouble-promotion).
Every entry point must be present, and a float32 module must hold no .f64
instruction. Planted faults prove the checks can fail. A missing compiler
skips locally and fails under CI=true.
"""

import pytest

from polylstm_cupy import _compile, _emulation, _kernels
from polylstm_cupy._testsupport import require

ARCHS = ("80", "90")
SUFFIXES = ("f32", "f64")
FILES = sorted(_kernels.KERNEL_FILES)


@pytest.fixture(scope="module")
def nvrtc():
    try:
        return _compile.Nvrtc()
    except OSError as exc:
        require(None, f"NVRTC ({exc})")


@pytest.fixture(scope="module")
def nvcc():
    return require(_compile.find_nvcc(), "nvcc")


@pytest.fixture(scope="module")
def cxx():
    return require(_emulation.find_cxx(), "a C++ compiler (g++) for the emulation")


def _expected(file, suffix):
    return [name for name in _kernels.expected_entries((suffix,))[file]]


def _assert_module(ptx: bytes, file: str, suffix: str, compiler: str) -> None:
    assert sorted(_compile.ptx_entries(ptx)) == sorted(_expected(file, suffix)), (
        f"{compiler}: {file} ({suffix}) exports {_compile.ptx_entries(ptx)}, "
        f"expected {_expected(file, suffix)}"
    )
    if suffix == "f32":
        doubles = _compile.ptx_uses_double(ptx)
        assert not doubles, f"{compiler}: float32 module of {file} computes in double:\n" + "\n".join(doubles[:10])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("file", FILES)
def test_nvrtc_compiles(nvrtc, file, suffix, arch):
    source = _kernels.module_source(file)
    ptx = nvrtc.compile(source, file, _compile.raw_module_nvrtc_options(suffix, f"compute_{arch}"))
    _assert_module(ptx["ptx"], file, suffix, f"NVRTC {nvrtc.version()}")
    cubin = nvrtc.compile(source, file, _compile.raw_module_nvrtc_options(suffix, f"sm_{arch}"))
    assert cubin["cubin"][:4] == b"\x7fELF", "NVRTC returned no ELF cubin"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("file", FILES)
def test_nvcc_compiles(nvcc, file, suffix, arch):
    ptx = _compile.nvcc_compile(nvcc, file, suffix, f"sm_{arch}", "ptx")
    _assert_module(ptx, file, suffix, "nvcc")
    cubin = _compile.nvcc_compile(nvcc, file, suffix, f"sm_{arch}", "cubin")
    assert cubin[:4] == b"\x7fELF"


@pytest.mark.parametrize("file", FILES)
def test_emulation_builds_without_warnings(cxx, file, tmp_path):
    path, log = _emulation.build_library(
        _kernels.KERNEL_DIR / file, _kernels.expected_entries()[file],
        extra_flags=("-Werror",), cxx=cxx, out_dir=tmp_path,
    )
    assert path.exists()
    assert log.strip() == "", f"g++ warned while building the emulation of {file}:\n{log}"


# A float kernel with an unsuffixed literal: 0.1 is a double, so `a * 0.1`
# computes in double (0.1 is not a power of two, so the compiler cannot
# narrow it to float). Every check above must reject it.
PLANTED_DOUBLE = r'''
extern "C" __global__ void halve_f32(const int n, const float* a, float* out) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    out[i] = a[i] * 0.1;
  }
}
'''


def test_planted_double_literal_is_caught_by_nvrtc(nvrtc):
    ptx = nvrtc.compile(PLANTED_DOUBLE, "planted.cu", _compile.raw_module_nvrtc_options("f32", "compute_80"))
    assert _compile.ptx_entries(ptx["ptx"]) == ["halve_f32"]
    assert _compile.ptx_uses_double(ptx["ptx"]), "the .f64 check missed a double literal"


def test_planted_double_literal_is_caught_by_gxx(cxx, tmp_path):
    cu = tmp_path / "planted.cu"
    cu.write_text(PLANTED_DOUBLE)
    with pytest.raises(RuntimeError, match="double-promotion"):
        _emulation.build_library(cu, ["halve_f32"], cxx=cxx, out_dir=tmp_path)


def test_planted_double_literal_is_caught_by_nvcc(nvcc, tmp_path):
    cu = tmp_path / "planted.cu"
    cu.write_text(PLANTED_DOUBLE)
    ptx = _compile.nvcc_compile(nvcc, cu, "f32", "sm_80", "ptx")
    assert _compile.ptx_uses_double(ptx)
    with pytest.raises(_compile.CompileError, match="double"):
        _compile.nvcc_compile(nvcc, cu, "f32", "sm_90", "cubin")


def test_missing_compiler_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"):
        require(None, "nvcc")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        require(None, "nvcc")


def test_nvrtc_rejects_system_include(nvrtc):
    # The reason NVRTC, not nvcc, is the check of record.
    source = "#include <cmath>\n" + PLANTED_DOUBLE.replace("0.1", "0.1f")
    with pytest.raises(_compile.CompileError, match="cmath"):
        nvrtc.compile(source, "planted.cu", _compile.raw_module_nvrtc_options("f32", "compute_80"))


def test_module_source_expands_our_headers_only():
    for file in FILES:
        text = _kernels.module_source(file)
        assert '#include "lstm_common.cuh"' not in text
        assert "namespace polylstm" in text
        assert "#include <" not in text, f"{file} includes a system header (NVRTC has none)"
