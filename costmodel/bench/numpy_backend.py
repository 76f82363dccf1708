"""numpy backend: the host CPU (GEMM through the BLAS numpy links, memory copy / read, elementwise).

Always available. Buffers are sized past the last-level cache (``llc_bytes``, read from sysfs, or
32 MiB when unknown) and rotated, so results are DRAM bandwidth, not cache bandwidth.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .records import gemm_bytes, gemm_flops
from .timing import Case, n_sets, time_host

# Fallback last-level cache size when sysfs does not say (typical server L3 slice per CCD/socket).
DEFAULT_LLC_BYTES = 32 * 2**20
# Host memory the numpy backend may take for rotated inputs (the dev machine has 24 GiB).
MAX_SET_BYTES = 2 * 2**30

NP_DTYPES = {"fp32": np.float32, "fp64": np.float64}
# Relative error of a GEMM checked against float64 (METHOD.md: fp32 lands far under 1e-3).
GEMM_TOL = {"fp32": 1e-4, "fp64": 1e-10}


def llc_bytes() -> int:
    """Largest cache size the kernel reports for cpu0 (sysfs), else DEFAULT_LLC_BYTES."""
    best = 0
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for idx in base.glob("index*"):
            txt = (idx / "size").read_text().strip()
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(txt[-1:], 1)
            val = int(txt[:-1]) if txt[-1:] in "KMG" else int(txt)
            best = max(best, val * mult)
    except (OSError, ValueError):
        pass
    return best or DEFAULT_LLC_BYTES


# How a call is timed: wall time, or the calling thread's CPU time ("thread": one BLAS thread, on a
# host shared with other processes; OPENBLAS_NUM_THREADS=1, else the BLAS threads' time is missed).
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class NumpyBench:
    backend = "numpy"

    def __init__(self, hardware: str = "cpu-host", quick: bool = False, seed: int = 0, clock: str = "wall"):
        if clock not in CLOCKS:
            raise ValueError(clock)
        self.clock = clock
        self.hardware = hardware
        self.quick = quick
        self.rng = np.random.default_rng(seed)
        self.llc = llc_bytes()
        # Quick runs: 3 rounds of ~0.03 s per case (shuffled, median kept by the caller) rather than
        # one of 0.12 s: on a shared 2-core host one round's held-back GEMM max error ranged 11-28%
        # over five runs, as other processes' load came and went.
        # Quick runs after the buffer pool (rounds ~ 4 s each here): 5 rounds of 0.05 s per case,
        # each round's median, the fastest round kept (round_stat, records.merge_rounds).
        self.budget_s = 0.05 if quick else 0.4
        self.rounds = 5 if quick else 1
        self.round_stat = "min"
        self.min_reps = 3 if quick else 7
        self.device = f"host CPU ({threads()} threads)"
        self._pool: dict[int, np.ndarray] = {}  # slot -> random float32 buffer, reused by the memory cases
        self._weight_sets: dict[tuple, list[np.ndarray]] = {}  # (k, n, dtype) -> GEMM B operands

    def _weights(self, k: int, n: int, npdt, ns: int) -> list[np.ndarray]:
        """``ns`` random k x n operands, kept for the run: the LLM-shaped GEMMs of every m and round
        share their weight matrices (each set still distinct, so rotating them defeats the cache)."""
        key = (k, n, np.dtype(npdt).str)
        have = self._weight_sets.setdefault(key, [])
        while len(have) < ns:
            have.append(self.rng.standard_normal((k, n), dtype=npdt))
        return have[:ns]

    def _buffer(self, slot: int, n: int) -> np.ndarray:
        """The first ``n`` elements of a random (non-zero) float32 buffer kept for the whole run:
        the memory cases of every size and round slice the same few buffers instead of drawing
        hundreds of MB of random numbers per case (which took most of a quick run). Every buffer
        is >= 2x the last-level cache, so a pass over one slot evicts the others."""
        buf = self._pool.get(slot)
        if buf is None or buf.size < n:
            top = max(n, max(self.mem_sizes()) // 4)
            buf = self._pool[slot] = self.rng.random(top, dtype=np.float32) + 0.5
        return buf[:n]

    # -------------------------------------------------------------------- shapes
    def gemm_shapes(self) -> list[tuple[str, str, int, int, int]]:
        """(op, dtype, m, n, k). Square sizes, and LLM-shaped m tokens x (k -> n) projections."""
        out = []
        sq = [128, 192, 256, 320, 384, 448, 512, 640, 768, 1024] if self.quick else [64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072]
        for n in sq:
            out.append(("gemm", "fp32", n, n, n))
        if not self.quick:
            for n in (128, 256, 512, 1024):
                out.append(("gemm", "fp64", n, n, n))
        k, n = (1024, 2048) if self.quick else (2048, 4096)
        # m = 16 and 32 pin OpenBLAS's packing phase (calibration.pack_s: a fixed ~0.8 ms for this k x n
        # on the 2-core host, then ~21 us per row), which a curve through m >= 48 alone under-counted:
        # without them, quick --check runs missed 15% in 2 of 6 (m = 48 and 64, 10-21% slow); with
        # them and the packing term, the held-back maximum was 8.1-13.1% in 10 of 10 runs.
        # m = 4, 8 and 24 (session 12): when m = 16 itself was held back (seed 0), only m = 32 was left
        # to pin the packing phase and m = 16 came out 16-29% fast; over 8 splits of each of 12 quick
        # runs, 20 of 96 splits missed a held-back shape by > 15%, against 2 of 64 with these rows
        # (data/measurements/cpu/2026-11-23-host-quick/).
        ms = [1, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512] if self.quick else [1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048]
        for m in ms:
            out.append(("gemm_llm", "fp32", m, n, k))
        # Matrix-vector products of a small model's decode step (one token): OpenBLAS runs narrow
        # outputs (n = 512) a third slower per byte than the wide projection above, which a curve
        # through that projection alone does not show (measured on this project's host, one thread:
        # 15 GB/s at 512 x 512 and 1536 x 512, 22-27 GB/s at 512 x 1536 .. 2048 x 4096).
        for kk, nn in ((512, 512), (1536, 512), (512, 1536), (4096, 1024)):
            out.append(("gemm_llm", "fp32", 1, nn, kk))
        return out

    def mem_sizes(self) -> list[int]:
        """Bytes per buffer: 2x to 16x the last-level cache."""
        return [int(m * self.llc) // 4096 * 4096 for m in self._mem_mult()]

    # A 4 KiB elementwise add (in cache): its time is one numpy call's, which pins the floor of the
    # elementwise curve and so the overlay's launch_overhead_s (the per-op cost of a CPU step's small
    # ops, costmodel.cpu.op_overhead_s); the DRAM sizes above alone leave it to the fit's prior.
    SMALL_OP_BYTES = 4096

    def _mem_mult(self) -> list[int]:
        """Buffer sizes in last-level caches. The quick grid stays under 8x: on this project's 2-core
        host (32 MiB LLC) np.copyto of >= 256 MiB ran at 26 GB/s against 20 GB/s at 64-192 MiB
        (glibc's memcpy switches to non-temporal stores above a threshold, saving the
        read-for-ownership of the destination), a regime a single-bandwidth fit cannot hold with
        one point in it; the full grid spans both."""
        return [2, 3, 4, 5, 6] if self.quick else [2, 3, 4, 6, 8, 12, 16]

    # -------------------------------------------------------------------- cases
    def cases(self, ops: set[str] | None = None) -> list[Case]:
        want = (lambda op: ops is None or op in ops)
        cases: list[Case] = []
        for op, dt, m, n, k in self.gemm_shapes():
            if want(op) or want("gemm"):
                cases.append(Case(f"{op} {dt} {m}x{n}x{k}", op, (lambda op=op, dt=dt, m=m, n=n, k=k: [self.gemm(op, dt, m, n, k)]),
                                  weight=1 + gemm_flops(m, n, k) / 2e9))
        for nbytes in self.mem_sizes():
            for op in ("mem_copy", "mem_read", "elementwise_add"):
                if want(op):
                    cases.append(Case(f"{op} {nbytes / 2**20:.0f} MiB", op, (lambda op=op, nb=nbytes: [self.memory(op, nb)]), weight=1 + nbytes / 2**27))
        if want("elementwise_add"):
            nb = self.SMALL_OP_BYTES
            cases.append(Case(f"elementwise_add {nb // 1024} KiB", "elementwise_add",
                              (lambda nb=nb: [self.memory("elementwise_add", nb)]), weight=1))
        return cases

    def _base(self, op: str, **kw) -> dict:
        rec = {"kind": "kernel", "op": op}
        rec.update(kw)
        rec.update({"hardware": self.hardware, "backend": self.backend, "device": self.device})
        if self.clock != "wall":
            rec["clock"] = self.clock
        return rec

    def gemm_sets(self, op: str, m: int, n: int, k: int, dt: str) -> int:
        """Input sets a GEMM rotates among: three last-level caches' worth, at most 16, but for the
        LLM-shaped ones as many as that takes (at most 128): a decode's matrix-vector products
        stream their weights from DRAM, and 16 sets of a 512 x 512 fp32 matrix (16 MiB) sat half in
        this project's 32 MiB cache, which other processes share: 15-23 GB/s from run to run
        against 15 GB/s with 96 sets (measured on the host, one thread; data/measurements/cpu/)."""
        per_set = (m * k + k * n + m * n) * np.dtype(NP_DTYPES[dt]).itemsize
        return n_sets(per_set, self.llc, MAX_SET_BYTES, cap=128 if op == "gemm_llm" else 16)

    def gemm(self, op: str, dt: str, m: int, n: int, k: int) -> dict:
        npdt = NP_DTYPES[dt]
        ns = self.gemm_sets(op, m, n, k, dt)
        # drawn in the GEMM's own dtype (numpy's float32 normal sampler: half the cost of float64 + cast)
        A = [self.rng.standard_normal((m, k), dtype=npdt) for _ in range(ns)]
        B = self._weights(k, n, npdt, ns)
        C = [np.empty((m, n), dtype=npdt) for _ in range(ns)]

        def fn(i):
            np.matmul(A[i], B[i], out=C[i])

        fn(0)  # correctness once, on a corner of the product
        r, c = min(m, 32), min(n, 32)
        ref = A[0][:r].astype(np.float64) @ B[0][:, :c].astype(np.float64)
        err = np.linalg.norm(C[0][:r, :c] - ref) / max(np.linalg.norm(ref), 1e-30)
        if not err < GEMM_TOL[dt] * max(1.0, np.sqrt(k) / 32):
            raise RuntimeError(f"GEMM result wrong: relative error {err:.2e}")
        t = time_host(fn, ns, budget_s=self.budget_s, min_reps=self.min_reps, clock=CLOCKS[self.clock])
        F = gemm_flops(m, n, k)
        rec = self._base(op, dtype=dt, m=m, n=n, k=k, s=t.median_s, tflops=F / t.median_s / 1e12, repeats=t.repeats)
        if op == "gemm_llm":
            rec["gbps"] = gemm_bytes(m, n, k, dt) / t.median_s / 1e9
        return rec

    def memory(self, op: str, nbytes: int) -> dict:
        n = nbytes // 4
        # Each buffer is already >= 2x the last-level cache, so one pass evicts the last: quick runs
        # keep one set (pool slots 0-2), full runs alternate two (slots 3-5 too). Non-zero random
        # values (never zeros: METHOD.md); uniform draws are 4x cheaper than normal ones.
        ns = 1 if self.quick else 2
        src = [self._buffer(3 * i, n) for i in range(ns)]
        if op == "mem_copy":
            dst = [self._buffer(3 * i + 1, n) for i in range(ns)]

            def fn(i):
                np.copyto(dst[i], src[i])

            fn(0)
            if not np.array_equal(dst[0][:: max(1, n // 4096)], src[0][:: max(1, n // 4096)]):
                raise RuntimeError("copy result wrong")
            traffic = 2 * nbytes
        elif op == "mem_read":
            res = [None]

            def fn(i):
                res[0] = np.add.reduce(src[i])

            fn(0)
            ref = float(np.sum(src[0], dtype=np.float64))
            scale = float(np.sum(np.abs(src[0]), dtype=np.float64))
            if not abs(float(res[0]) - ref) <= 1e-4 * scale:  # pairwise float32 sum: ~eps*log2(n)
                raise RuntimeError("read (sum) result wrong")
            traffic = nbytes
        else:  # elementwise_add: out = a + b
            other = [self._buffer(3 * i + 1, n) for i in range(ns)]
            dst = [self._buffer(3 * i + 2, n) for i in range(ns)]

            def fn(i):
                np.add(src[i], other[i], out=dst[i])

            fn(0)
            if not np.allclose(dst[0][:4096], src[0][:4096] + other[0][:4096]):
                raise RuntimeError("add result wrong")
            traffic = 3 * nbytes
        t = time_host(fn, ns, budget_s=self.budget_s, min_reps=self.min_reps, clock=CLOCKS[self.clock])
        # SCHEMA.md: mem_copy 'bytes' is the buffer copied and gbps counts read + write;
        # for elementwise ops 'bytes' is everything read and written.
        rec_bytes = nbytes if op in ("mem_copy", "mem_read") else traffic
        return self._base(op, bytes=rec_bytes, s=t.median_s, gbps=traffic / t.median_s / 1e9, repeats=t.repeats)
