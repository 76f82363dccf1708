"""torch backend: a CUDA (or ROCm) GPU through PyTorch, or PyTorch's CPU path when none is there.

torch is imported here only, inside ``TorchBench.__init__``: importing ``costmodel.bench`` never
imports torch.

Timing on a GPU: CUDA events. For each case two numbers are taken:
- ``s``: after 30 ms of a low-power spin kernel, 3 warm-up calls and a burst of 10-40 isolated calls (synchronise, record
  an event, one call, record an event), the median: the convention of SCHEMA.md's records, at the
  clock of a short burst; for short kernels it includes the launch gap.
- ``s_stream``: after ~0.15 s of back-to-back load (the power controller lowers the clock of heavy
  kernels within ~0.1 s), calls queued back to back between two events, divided by their count, the
  median of three such batches: the kernel's own sustained time, as inside a training step.
``run_gpu --rounds N`` measures every case N times in shuffled order and keeps the median.
Inputs rotate among sets that overflow the L2 cache three times; data is random (never zeros,
which run faster: METHOD.md); each kernel's result is checked once against float64.
"""
from __future__ import annotations

import math
import re
import time

from .records import DTYPE_BYTES, gemm_bytes, gemm_flops, sdpa_flops
from .timing import Case, Timing, median, n_repeats, n_sets

# Relative error bounds against a float64 reference (METHOD.md: fp32 far under 1e-3, tf32 near
# 3e-4, bf16 operands 1e-3..1e-2); outputs rounded to bf16/fp16 add ~2^-9 per element.
GEMM_TOL = {"fp32": 1e-4, "tf32": 5e-3, "bf16": 1.5e-2, "fp16": 5e-3, "fp8": 8e-2}
# Memory the GPU-side rotated input sets may take (H100: 80 GB; leave room for the outputs).
MAX_SET_BYTES_GPU = 12 * 2**30
MAX_SET_BYTES_CPU = 1 * 2**30
# Timing protocol (since 2026-11-23c; the earlier runs took up to 60 isolated calls within 0.25 s and
# then the back-to-back batches, so a large GEMM's isolated calls ran at a clock the power controller
# had already lowered by a part that depended on what ran before: two H100 runs of the same shapes
# differed by up to 14% on large GEMMs). A short burst from idle, as the truth file's records and
# METHOD.md's "ten timed products after three warm-ups" take it, then a soak to the sustained clock.
# Before each case's burst: RECOVER_S of a one-block spin kernel (torch.cuda._sleep), not an idle
# sleep: in run 2026-11-23c a 30 ms time.sleep() let the card (345 MHz idle clock) or the host
# thread idle, and 5% of the bursts of small kernels then ran 1.3-12x slower than the other rounds.
RECOVER_S = 0.03
SPIN_HZ = 1.98e9  # cycles per second of the spin kernel (H100/H200 max SM clock; approximate is fine)
BURST_WARMUP = 3
BURST_MIN_REPS = 10
BURST_MAX_REPS = 40  # tiny kernels (host-bound) take more repeats: the burst stays under BURST_BUDGET_S
BURST_BUDGET_S = 0.004
SOAK_S = 0.15  # back-to-back load before the stream batches (the power controller settles in ~0.1 s)
SOAK_MAX_CALLS = 2000
STREAM_BATCH_S = 0.02


def hardware_id_from_name(name: str) -> str:
    """Spec id for a device name the runtime reports ('NVIDIA H100 80GB HBM3' -> 'h100-sxm').

    On ROCm, PyTorch's ``torch.cuda`` API drives HIP (``torch.version.hip`` is set) and
    ``get_device_name`` gives AMD's product name: 'AMD Instinct MI250X' (also 'AMD Instinct
    MI250X/MI250'), one GCD per device, which is what the per-GCD mi250x spec describes;
    'AMD Instinct MI300X'. A name without a shipped spec becomes a slug of itself."""
    n = name.lower()
    if "h100" in n:
        return "h100-pcie" if "pcie" in n else "h100-sxm"
    if "h200" in n:
        return "h200-nvl" if "nvl" in n else "h200-sxm"
    if "a100" in n:
        if "pcie" in n:
            return "a100-80gb-pcie"
        return "a100-80gb-sxm" if "80" in n else "a100-40gb-sxm"
    if "b200" in n:
        return "b200"
    if "mi300x" in n:
        return "mi300x"
    if "mi250x" in n:
        return "mi250x"
    return re.sub(r"[^a-z0-9]+", "-", n).strip("-") or "gpu"


def gpu_runtime(torch) -> dict:
    """Which GPU runtime PyTorch was built for: ROCm builds set ``torch.version.hip`` (and leave
    ``torch.version.cuda`` None); the same ``torch.cuda`` calls and events work on both, and
    ``torch.cuda.nccl`` is RCCL there."""
    hip = getattr(torch.version, "hip", None)
    return {"runtime": "rocm" if hip else "cuda", "hip": hip, "cuda": getattr(torch.version, "cuda", None)}


class TorchBench:
    backend = "torch"

    def __init__(self, hardware: str | None = None, quick: bool = False, seed: int = 0, device: str | None = None,
                 dtypes: list[str] | None = None):
        import torch  # lazily: the rest of the package never needs it

        self.torch = torch
        self.quick = quick
        want_cuda = device != "cpu"
        self.cuda = bool(want_cuda and torch.cuda.is_available())
        self.dev = torch.device("cuda" if self.cuda else "cpu")
        torch.manual_seed(seed)
        if self.cuda:
            props = torch.cuda.get_device_properties(0)
            self.device = props.name
            self.sms = int(props.multi_processor_count)
            self.l2 = int(getattr(props, "L2_cache_size", 0) or getattr(props, "l2_cache_size", 0) or 50 * 2**20)
            self.max_set = MAX_SET_BYTES_GPU
        else:
            from .numpy_backend import llc_bytes

            self.device = f"cpu (torch, {torch.get_num_threads()} threads)"
            self.sms = None
            self.l2 = llc_bytes()
            self.max_set = MAX_SET_BYTES_CPU
        self.hardware = hardware or (hardware_id_from_name(self.device) if self.cuda else "cpu-host")
        self.budget_s = 0.08 if quick else 0.25
        self.dtypes = dtypes or (["bf16", "fp16", "fp32", "tf32", "fp8"] if self.cuda else ["fp32", "bf16"])
        if "fp8" in self.dtypes and not (self.cuda and hasattr(torch, "float8_e4m3fn") and hasattr(torch, "_scaled_mm")
                                         and torch.cuda.get_device_capability(0) >= (8, 9)):
            self.dtypes = [d for d in self.dtypes if d != "fp8"]

    # ------------------------------------------------------------------ plumbing
    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def _base(self, op: str, **kw) -> dict:
        rec = {"kind": "kernel", "op": op}
        rec.update(kw)
        rec.update({"hardware": self.hardware, "backend": self.backend, "device": self.device})
        if self.sms:
            rec["sms"] = self.sms  # multiprocessors: the calibration's wave-quantisation term uses it
        return rec

    def time(self, fn, nsets: int, *, warmup: int = BURST_WARMUP, min_reps: int = BURST_MIN_REPS, max_reps: int = BURST_MAX_REPS,
             budget_s: float | None = None, stream: bool = True) -> Timing:
        """Isolated-call median (a short burst from idle) and sustained back-to-back time of ``fn(i)``.

        Protocol (see the module docstring): ``RECOVER_S`` of a low-power spin kernel; ``warmup`` calls; ``min_reps`` to
        ``max_reps`` isolated calls (synchronise, event, call, event) within ``BURST_BUDGET_S`` of load,
        median: the boost-clock time of a short burst, SCHEMA.md's convention. Then ``SOAK_S`` of
        back-to-back calls, so the power controller settles, and three timed back-to-back batches,
        median: the sustained time per call, as inside a training step."""
        torch = self.torch
        if self.cuda and RECOVER_S:
            # A spin kernel on one multiprocessor: the card draws little power (the power controller
            # recovers from the previous case's soak) but stays busy, so neither the clock nor the
            # host thread drop into an idle state (an idle sleep did: run 2026-11-23c).
            torch.cuda._sleep(int(RECOVER_S * SPIN_HZ))
            torch.cuda.synchronize()
        for i in range(warmup):
            fn(i % nsets)
        self.sync()
        t0 = time.perf_counter()
        fn(warmup % nsets)
        self.sync()
        est = time.perf_counter() - t0
        reps = n_repeats(est, BURST_BUDGET_S if budget_s is None else budget_s, min_reps, max_reps)
        if not self.cuda:
            ts = []
            for r in range(reps):
                t0 = time.perf_counter()
                fn(r % nsets)
                ts.append(time.perf_counter() - t0)
            return Timing(median(ts), reps, None, ts)
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for r in range(reps):
            torch.cuda.synchronize()
            ev[r][0].record()
            fn(r % nsets)
            ev[r][1].record()
        torch.cuda.synchronize()
        iso = [a.elapsed_time(b) / 1e3 for a, b in ev]
        st = None
        if stream:
            k = median(iso)
            for r in range(int(min(SOAK_MAX_CALLS, max(3, SOAK_S / max(k, 1e-7))))):
                fn(r % nsets)
            batch = int(min(40, max(5, STREAM_BATCH_S / max(k, 1e-7))))
            per = []
            for _ in range(3):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for r in range(batch):
                    fn((r + 1) % nsets)
                b.record()
                per.append((a, b))
            torch.cuda.synchronize()
            st = median([a.elapsed_time(b) / 1e3 / batch for a, b in per])
        return Timing(median(iso), reps, st, iso)

    def power_trace(self, dt: str = "bf16", n: int = 8192, seconds: float = 0.4, idle_s: float = 1.0) -> dict:
        """Per-call times of an n^3 GEMM queued back to back for ``seconds`` after ``idle_s`` idle:
        how the achieved rate falls as the power controller lowers the clock under sustained load."""
        torch = self.torch
        tdt = self._tdtype(dt)
        A = [self._randn((n, n), tdt) for _ in range(2)]
        B = [self._randn((n, n), tdt) for _ in range(2)]
        C = torch.empty((n, n), device=self.dev, dtype=tdt)
        torch.mm(A[0], B[0], out=C)
        self.sync()
        t0 = time.perf_counter()
        torch.mm(A[0], B[0], out=C)
        self.sync()
        calls = int(max(10, seconds / (time.perf_counter() - t0)))
        time.sleep(idle_s)
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(calls + 1)]
        ev[0].record()
        for i in range(calls):
            torch.mm(A[i % 2], B[i % 2], out=C)
            ev[i + 1].record()
        torch.cuda.synchronize()
        ts = [ev[i].elapsed_time(ev[i + 1]) / 1e3 for i in range(calls)]
        f = gemm_flops(n, n, n)
        return {"op": "power_trace", "dtype": dt, "n": n, "idle_s": idle_s, "call_s": ts,
                "tflops": [f / t / 1e12 for t in ts], "hardware": self.hardware, "device": self.device}

    def _randn(self, shape, dtype):
        return self.torch.randn(*shape, device=self.dev, dtype=self.torch.float32).to(dtype)

    def _tdtype(self, dt: str):
        t = self.torch
        return {"bf16": t.bfloat16, "fp16": t.float16, "fp32": t.float32, "tf32": t.float32, "fp64": t.float64}[dt]

    # ------------------------------------------------------------------ plan
    def gemm_shapes(self) -> list[tuple[str, str, int, int, int]]:
        out = []
        if self.cuda:
            sq = [256, 512, 1024, 1536, 2048, 2560, 3072, 4096, 5120, 6144, 8192, 10240, 12288, 16384]
            if self.quick:
                sq = [512, 2048, 4096, 8192]
            for dt in self.dtypes:
                for n in sq:
                    if dt in ("fp32", "tf32") and n > 8192:
                        continue  # 16384^3 fp32 is 0.17 s a call: no new information
                    if dt == "fp8" and n < 512:
                        continue
                    out.append(("gemm", dt, n, n, n))
            # LLM-shaped: m tokens through a projection k -> n (Llama-3-70B's MLP up 8192 -> 28672
            # as in SCHEMA.md, 8B's 4096 -> 14336 and back, attention 4096 -> 4096).
            ms = [1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 32768] if not self.quick else [1, 128, 2048, 8192]
            llm = [(8192, 28672), (4096, 14336), (14336, 4096), (4096, 4096)]
            if self.quick:
                llm = llm[:2]
            for k, n in llm:
                for m in ms:
                    if m == 32768 and k * n > 8192 * 28672 // 2 and (k, n) != (8192, 28672):
                        continue
                    out.append(("gemm_llm", "bf16", m, n, k))
            for dt in [d for d in self.dtypes if d in ("fp16", "fp8", "tf32")]:
                # the bf16 series' m grid from decode to prefill (m = 16..8192), so that a held-back
                # m has measured neighbours: 4 points (16, 128, 1024, 8192) left m = 1024 tf32
                # interpolated across a factor of 8 (held back, -13%)
                for m in ([16, 64, 128, 256, 512, 1024, 2048, 4096, 8192] if not self.quick else [128, 2048]):
                    out.append(("gemm_llm", dt, m, 14336, 4096))
        else:
            for n in ([128, 256, 512, 768] if self.quick else [128, 256, 512, 768, 1024, 1536]):
                for dt in self.dtypes:
                    out.append(("gemm", dt, n, n, n))
            for m in [1, 16, 128, 512]:
                out.append(("gemm_llm", "fp32", m, 2048, 1024))
        return out

    def mem_sizes(self) -> list[int]:
        if self.cuda:
            return [2**20 * x for x in ((4, 64, 1024) if self.quick else (1, 4, 16, 64, 256, 1024, 4096))]
        return [2**20 * x for x in (64, 128, 256)]

    def sdpa_shapes(self) -> list[tuple[int, int, int, int, bool]]:
        if not self.cuda:
            return [(1, 4, 512, 64, True)]
        shapes = [(16, 16, 1024, 64, True), (32, 16, 512, 64, True), (8, 16, 2048, 64, True), (4, 16, 4096, 64, True),
                  (8, 32, 1024, 128, True), (4, 32, 2048, 128, True), (2, 32, 4096, 128, True), (1, 32, 8192, 128, True),
                  (1, 16, 16384, 128, True), (4, 32, 2048, 128, False), (16, 16, 1024, 64, False), (2, 8, 8192, 64, True)]
        return shapes[:4] if self.quick else shapes

    def cases(self, ops: set[str] | None = None) -> list[Case]:
        want = (lambda op: ops is None or op in ops)
        cs: list[Case] = []
        for op, dt, m, n, k in self.gemm_shapes():
            if want(op) or want("gemm"):
                cs.append(Case(f"{op} {dt} {m}x{n}x{k}", op, (lambda op=op, dt=dt, m=m, n=n, k=k: [self.gemm(op, dt, m, n, k)]),
                               weight=1 + gemm_flops(m, n, k) / 5e13))
        for nb in self.mem_sizes():
            for op in ("mem_copy", "mem_read"):
                if want(op):
                    cs.append(Case(f"{op} {nb / 2**20:.0f} MiB", op, (lambda op=op, nb=nb: [self.memory(op, nb)])))
        for op in ("elementwise_add", "gelu", "layernorm"):
            if want(op) or want("elementwise"):
                sizes = [16 * 2**20, 64 * 2**20, 256 * 2**20, 2**30] if not self.quick else [64 * 2**20, 2**30]
                for nb in (sizes if self.cuda else self.mem_sizes()[:2]):
                    cs.append(Case(f"{op} {nb / 2**20:.0f} MiB", op, (lambda op=op, nb=nb: [self.elementwise(op, nb)])))
        for b, h, s, d, causal in self.sdpa_shapes():
            for bwd in (False, True):
                op = "sdpa_fwd_bwd" if bwd else "sdpa_fwd"
                if want(op) or want("sdpa"):
                    cs.append(Case(f"{op} b{b} h{h} s{s} d{d}{'' if causal else ' full'}", op,
                                   (lambda b=b, h=h, s=s, d=d, c=causal, bwd=bwd: [self.sdpa(b, h, s, d, c, bwd)]), weight=2))
        if self.cuda:
            for nb in ([2**20, 2**30] if self.quick else [2**20, 16 * 2**20, 256 * 2**20, 2**30]):
                for op in ("h2d_pinned", "d2h_pinned", "h2d_pageable", "d2h_pageable"):
                    if want(op) or want("host"):
                        cs.append(Case(f"{op} {nb / 2**20:.0f} MiB", op, (lambda op=op, nb=nb: [self.host_copy(op, nb)]), weight=2))
        return cs

    # ------------------------------------------------------------------ kernels
    def gemm(self, op: str, dt: str, m: int, n: int, k: int) -> dict:
        torch = self.torch
        fp8 = dt == "fp8"
        ebytes = DTYPE_BYTES[dt]
        per_set = ebytes * (m * k + k * n) + (2 if fp8 else ebytes) * m * n
        ns = n_sets(per_set, self.l2, self.max_set, cap=64)
        prev_prec = torch.get_float32_matmul_precision()
        try:
            # 'high' lets float32 matmuls use TF32 tensor cores, 'highest' keeps true fp32.
            torch.set_float32_matmul_precision("high" if dt == "tf32" else "highest")
            if fp8:
                f8 = torch.float8_e4m3fn
                A = [self._randn((m, k), torch.float32).to(f8) for _ in range(ns)]
                Bt = [self._randn((n, k), torch.float32).to(f8) for _ in range(ns)]  # row-major (n,k): B = Bt.t() column-major
                one = torch.ones((), device=self.dev, dtype=torch.float32)
                out = [None]

                def fn(i):
                    out[0] = torch._scaled_mm(A[i], Bt[i].t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

                fn(0)
                self.sync()
                C0 = out[0]
                ref = A[0][:64].float().double() @ Bt[0][:64].float().double().t()
            else:
                tdt = self._tdtype(dt)
                A = [self._randn((m, k), tdt) for _ in range(ns)]
                B = [self._randn((k, n), tdt) for _ in range(ns)]
                C = [torch.empty((m, n), device=self.dev, dtype=tdt) for _ in range(ns)]

                def fn(i):
                    torch.mm(A[i], B[i], out=C[i])

                fn(0)
                self.sync()
                C0 = C[0]
                ref = A[0][:64].double() @ B[0][:, :64].double()
            got = C0[:64, :64].double()
            err = float((got - ref).norm() / ref.norm().clamp_min(1e-30))
            if not err < GEMM_TOL[dt]:
                raise RuntimeError(f"{dt} GEMM {m}x{n}x{k} wrong: relative error {err:.2e}")
            t = self.time(fn, ns)
        finally:
            torch.set_float32_matmul_precision(prev_prec)
        F = gemm_flops(m, n, k)
        rec = self._base(op, dtype=dt, m=m, n=n, k=k, s=t.median_s, tflops=F / t.median_s / 1e12, s_stream=t.stream_s,
                         repeats=t.repeats, check_rel_err=err)
        if op == "gemm_llm":
            rec["gbps"] = gemm_bytes(m, n, k, dt) / t.median_s / 1e9
        return rec

    def memory(self, op: str, nbytes: int) -> dict:
        torch = self.torch
        n = nbytes // 4
        per_set = nbytes * (2 if op == "mem_copy" else 1)
        ns = n_sets(per_set, self.l2, self.max_set, cap=256)
        src = [torch.randn(n, device=self.dev, dtype=torch.float32) for _ in range(ns)]
        if op == "mem_copy":
            dst = [torch.empty_like(src[0]) for _ in range(ns)]

            def fn(i):
                dst[i].copy_(src[i])

            fn(0)
            self.sync()
            if not torch.equal(dst[0], src[0]):
                raise RuntimeError("copy result wrong")
            traffic = 2 * nbytes
        else:
            res = [None]

            def fn(i):
                res[0] = src[i].sum()

            fn(0)
            self.sync()
            ref = src[0].double().sum()
            if not float((res[0].double() - ref).abs()) <= 1e-4 * float(src[0].double().abs().sum()):
                raise RuntimeError("read (sum) result wrong")
            traffic = nbytes
        t = self.time(fn, ns)
        return self._base(op, bytes=nbytes, s=t.median_s, gbps=traffic / t.median_s / 1e9, s_stream=t.stream_s,
                          gbps_stream=(traffic / t.stream_s / 1e9) if t.stream_s else None, repeats=t.repeats)

    def elementwise(self, op: str, nbytes: int) -> dict:
        """bf16 on a GPU (fp32 on a CPU); ``bytes`` = bytes read + written by the fused kernel."""
        torch = self.torch
        F = torch.nn.functional
        dt = torch.bfloat16 if self.cuda else torch.float32
        e = 2 if self.cuda else 4
        hidden = 4096
        n = max(hidden, nbytes // e // hidden * hidden)
        if op == "elementwise_add":
            traffic = 3 * n * e
        else:
            traffic = 2 * n * e
        ns = n_sets(traffic, self.l2, self.max_set, cap=64)
        X = [torch.randn(n // hidden, hidden, device=self.dev, dtype=dt) for _ in range(ns)]
        Y = [torch.randn(n // hidden, hidden, device=self.dev, dtype=dt) for _ in range(ns)] if op == "elementwise_add" else None
        w = torch.randn(hidden, device=self.dev, dtype=dt)
        bias = torch.randn(hidden, device=self.dev, dtype=dt)
        out = [torch.empty_like(X[0]) for _ in range(ns)] if op == "elementwise_add" else None
        res = [None]

        def fn(i):
            if op == "elementwise_add":
                torch.add(X[i], Y[i], out=out[i])
            elif op == "gelu":
                res[0] = F.gelu(X[i])
            else:
                res[0] = F.layer_norm(X[i], (hidden,), w, bias)

        fn(0)
        self.sync()
        x = X[0][:8].double()
        if op == "elementwise_add":
            got, ref = out[0][:8].double(), x + Y[0][:8].double()
        elif op == "gelu":
            got, ref = res[0][:8].double(), F.gelu(x)
        else:
            got, ref = res[0][:8].double(), F.layer_norm(x, (hidden,), w.double(), bias.double())
        err = float((got - ref).norm() / ref.norm())
        if not err < 2e-2:
            raise RuntimeError(f"{op} wrong: relative error {err:.2e}")
        t = self.time(fn, ns)
        return self._base(op, bytes=traffic, s=t.median_s, gbps=traffic / t.median_s / 1e9, s_stream=t.stream_s,
                          dtype="bf16" if self.cuda else "fp32", repeats=t.repeats)

    def sdpa(self, b: int, h: int, s: int, d: int, causal: bool, backward: bool) -> dict:
        torch = self.torch
        F = torch.nn.functional
        dt = torch.bfloat16 if self.cuda else torch.float32
        per_set = 4 * b * h * s * d * 2
        ns = n_sets(per_set, self.l2, min(self.max_set, 4 * 2**30), cap=8)
        Q = [torch.randn(b, h, s, d, device=self.dev, dtype=dt, requires_grad=backward) for _ in range(ns)]
        K = [torch.randn(b, h, s, d, device=self.dev, dtype=dt, requires_grad=backward) for _ in range(ns)]
        V = [torch.randn(b, h, s, d, device=self.dev, dtype=dt, requires_grad=backward) for _ in range(ns)]
        G = torch.randn(b, h, s, d, device=self.dev, dtype=dt)
        res = [None]

        def fn(i):
            if backward:
                o = F.scaled_dot_product_attention(Q[i], K[i], V[i], is_causal=causal)
                res[0] = torch.autograd.grad(o, (Q[i], K[i], V[i]), G)
            else:
                with torch.no_grad():
                    res[0] = F.scaled_dot_product_attention(Q[i], K[i], V[i], is_causal=causal)

        fn(0)
        self.sync()
        # Check one head of the forward pass against float64 attention, on the first L query rows
        # (with a causal mask those depend only on the first L keys).
        with torch.no_grad():
            L = min(s, 512)
            o = F.scaled_dot_product_attention(Q[0][:1, :1], K[0][:1, :1], V[0][:1, :1], is_causal=causal)[0, 0, :L].double()
            nk = L if causal else s
            q, k, v = Q[0][0, 0, :L].double(), K[0][0, 0, :nk].double(), V[0][0, 0, :nk].double()
            sc = (q @ k.t()) / math.sqrt(d)
            if causal:
                sc = sc.masked_fill(torch.ones(L, L, dtype=torch.bool, device=self.dev).triu(1), float("-inf"))
            ref = torch.softmax(sc, -1) @ v
            err = float((o - ref).norm() / ref.norm())
        if not err < 2e-2:
            raise RuntimeError(f"sdpa wrong: relative error {err:.2e}")
        t = self.time(fn, ns)
        fl = sdpa_flops(b, h, s, d, causal, backward)
        return self._base("sdpa_fwd_bwd" if backward else "sdpa_fwd", b=b, h=h, s=s, d=d, causal=causal, s_time=t.median_s,
                          tflops=fl / t.median_s / 1e12, s_stream=t.stream_s, dtype="bf16" if self.cuda else "fp32", repeats=t.repeats)

    def host_copy(self, op: str, nbytes: int) -> dict:
        torch = self.torch
        pinned = "pinned" in op
        dev_t = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=self.dev)
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
        host.copy_(dev_t)
        if op.startswith("h2d"):
            def fn(i):
                dev_t.copy_(host, non_blocking=pinned)
        else:
            def fn(i):
                host.copy_(dev_t, non_blocking=pinned)
        fn(0)
        self.sync()
        if not torch.equal(host[:4096].to(self.dev), dev_t[:4096]):
            raise RuntimeError(f"{op} result wrong")
        t = self.time(fn, 1, min_reps=3, max_reps=20, budget_s=0.25, stream=False)
        return self._base(op, bytes=nbytes, s=t.median_s, gbps=nbytes / t.median_s / 1e9, repeats=t.repeats)
