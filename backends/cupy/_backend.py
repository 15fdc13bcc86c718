"""The two backends built on the CuPy orchestration: ``cupy`` and ``cupy-emulated``.

Both are one class, :class:`RawKernelBackend`, given an array module and a
kernel launcher: ``cupy`` uses CuPy arrays and RawModule kernels on the
current CUDA device; ``cupy-emulated`` uses NumPy arrays and the same .cu
kernels compiled for the CPU. Shapes and semantics: :mod:`polylstm.backend`.
"""

from __future__ import annotations

from polylstm.backend import ALL_CAPABILITIES, Backend

from . import _orchestration


class RawKernelBackend(Backend):
    """LSTM forward/BPTT with the .cu kernels of this package.

    xp:         array module of the arrays in and out (cupy or numpy).
    launch:     kernel launcher, ``launch(entry, dtype, grid, block, args)``.
    block:      threads per block of the pointwise kernels.
    max_blocks: cap on the grid (None: one thread per element); the kernels
                are grid-stride loops, so any cap gives the same result.
    """

    capabilities = ALL_CAPABILITIES

    def __init__(self, name, xp, launch, *, block: int = 256, max_blocks: int | None = None):
        self.name = name
        self.xp = xp
        self.launch = launch
        self.block = block
        self.max_blocks = max_blocks

    def forward(self, x, w_ih, w_hh, b, h0, c0, peephole, lengths, reverse, store):
        """x: (T, B, I) ... -> ForwardOutput; see polylstm.backend.Backend.forward."""
        return _orchestration.forward(
            self.xp, self.launch, x, w_ih, w_hh, b, h0, c0, peephole, lengths, reverse, store,
            block=self.block, max_blocks=self.max_blocks,
        )

    def backward(self, tape, dy, dh_n, dc_n):
        """dy: (T, B, H), dh_n, dc_n: (B, H) -> Gradients; see Backend.backward."""
        return _orchestration.backward(
            self.xp, self.launch, tape, dy, dh_n, dc_n, block=self.block, max_blocks=self.max_blocks,
        )


class CupyBackend(RawKernelBackend):
    """``cupy``: CuPy arrays on the current device, kernels through cupy.RawModule."""

    def __init__(self, **launch_options):
        import cupy

        from ._kernels import CupyKernels

        super().__init__("cupy", cupy, CupyKernels(), **launch_options)

    def asarray(self, array):
        """Copy a host array to the current device (same dtype); CuPy arrays pass through.

        The core calls this only when the user named this backend explicitly
        while passing host arrays -- the one case where polylstm moves data
        between host and device, because the user asked for it.
        """
        return self.xp.asarray(array)


def emulated_backend(*, sanitize: str | None = None, walk: str = "forward", block: int = 256,
                     max_blocks: int | None = None) -> RawKernelBackend:
    """``cupy-emulated``: NumPy arrays, the .cu kernels compiled for the CPU.

    sanitize="address" loads the AddressSanitizer build (the process must
    have the ASan runtime preloaded; see polylstm_cupy._emulation).
    walk="backward" runs every launch's threads in reverse order (a kernel
    free of data races gives the same bits).
    """
    import numpy

    from ._emulation import EmulatedKernels

    return RawKernelBackend("cupy-emulated", numpy, EmulatedKernels(sanitize=sanitize, walk=walk),
                            block=block, max_blocks=max_blocks)
