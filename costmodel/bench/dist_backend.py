"""torch.distributed backend: NCCL collectives across the GPUs of a node, run under ``torchrun``.

    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node=2 -m costmodel.bench.run_gpu --collectives --out DIR

One process per GPU. Sizes follow nccl-tests: ``bytes`` is the whole buffer (the output of an
all-gather, the input of a reduce-scatter), ``algbw = bytes / time`` and ``busbw = algbw x
busbw_factor`` (records.busbw_factor). Each timed call is preceded by a barrier and a device
synchronisation, timed with CUDA events on every rank; the slowest rank's time is the call's time
and the record holds the median over calls (``s``), plus back-to-back calls (``s_stream``).
Data is random fp32; the all-reduce result is checked once.

NVLink multicast (NVLS) stays off: the device notes of this workplace require NCCL_NVLS_ENABLE=0,
which this module sets when it is unset and refuses to run without.
"""
from __future__ import annotations

import os
import time

from .records import busbw_factor
from .timing import Case, median, n_repeats

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")


def default_sizes(quick: bool) -> list[int]:
    top = 30 if quick else 32  # 1 GiB quick, 4 GiB full
    return [2**e for e in range(10, top + 1, 2)]  # 1 KiB, 4 KiB, ... x4


class DistBench:
    backend = "nccl"

    def __init__(self, hardware: str | None = None, quick: bool = False, seed: int = 0):
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        if os.environ.get("NCCL_NVLS_ENABLE") != "0":
            raise RuntimeError("NCCL_NVLS_ENABLE must be 0 on this workplace's machines")
        import torch
        import torch.distributed as dist

        from .torch_backend import hardware_id_from_name

        self.torch, self.dist = torch, dist
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", str(self.rank)))
        torch.cuda.set_device(self.local_rank)
        self.dev = torch.device("cuda", self.local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl", device_id=self.dev)
        torch.manual_seed(seed + self.rank)
        self.quick = quick
        self.device = torch.cuda.get_device_name(self.local_rank)
        self.hardware = hardware or hardware_id_from_name(self.device)
        self.budget_s = 0.1 if quick else 0.25

    def close(self):
        if self.dist.is_initialized():
            self.dist.barrier()
            self.dist.destroy_process_group()

    def cases(self, ops: set[str] | None = None, sizes: list[int] | None = None) -> list[Case]:
        cs = []
        for nb in sizes or default_sizes(self.quick):
            for op in OPS:
                if ops is None or op in ops or "collectives" in ops:
                    if op == "send_recv" and self.world < 2:
                        continue
                    cs.append(Case(f"{op} {nb} B x{self.world}", op, (lambda op=op, nb=nb: self.collective(op, nb)), weight=1 + nb / 2**28))
        return cs

    def _buffers(self, op: str, nbytes: int):
        torch, w = self.torch, self.world
        n = max(w, nbytes // 4 // w * w)  # fp32 elements, divisible by the world size
        mk = lambda k: torch.randn(k, device=self.dev, dtype=torch.float32)  # noqa: E731
        if op == "all_reduce":
            return mk(n), None
        if op == "all_gather":  # bytes = whole output
            return mk(n // w), torch.empty(n, device=self.dev, dtype=torch.float32)
        if op == "reduce_scatter":  # bytes = whole input
            return mk(n), torch.empty(n // w, device=self.dev, dtype=torch.float32)
        if op == "all_to_all":
            return mk(n), torch.empty(n, device=self.dev, dtype=torch.float32)
        return mk(n), None  # send_recv

    def collective(self, op: str, nbytes: int) -> list[dict]:
        torch, dist, w, r = self.torch, self.dist, self.world, self.rank
        x, y = self._buffers(op, nbytes)
        nbytes = x.numel() * 4 if op != "all_gather" else y.numel() * 4
        half = w // 2
        peer = (r + half) % w if w > 1 else r
        sender = r < half

        def fn():
            if op == "all_reduce":
                dist.all_reduce(x)
            elif op == "all_gather":
                dist.all_gather_into_tensor(y, x)
            elif op == "reduce_scatter":
                dist.reduce_scatter_tensor(y, x)
            elif op == "all_to_all":
                dist.all_to_all_single(y, x)
            elif w > 1:
                if sender:
                    dist.send(x, peer)
                else:
                    dist.recv(x, peer)

        if op == "all_reduce":  # correctness once: the sum of every rank's buffer
            probe = torch.full((1024,), float(r + 1), device=self.dev)
            dist.all_reduce(probe)
            if not torch.allclose(probe, torch.full_like(probe, w * (w + 1) / 2)):
                raise RuntimeError("all_reduce result wrong")
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        est = torch.tensor([time.perf_counter() - t0], device=self.dev)
        dist.all_reduce(est, op=dist.ReduceOp.MAX)
        reps = n_repeats(float(est), self.budget_s, 5, 40)
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for i in range(reps):
            dist.barrier()
            torch.cuda.synchronize()
            ev[i][0].record()
            fn()
            ev[i][1].record()
        torch.cuda.synchronize()
        iso = torch.tensor([a.elapsed_time(b) / 1e3 for a, b in ev], device=self.dev)
        # Back-to-back calls: one event pair around a batch.
        batch = max(3, min(reps, 20))
        dist.barrier()
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        fn()
        a.record()
        for _ in range(batch):
            fn()
        b.record()
        torch.cuda.synchronize()
        st = torch.tensor([a.elapsed_time(b) / 1e3 / batch], device=self.dev)
        dist.all_reduce(iso, op=dist.ReduceOp.MAX)
        dist.all_reduce(st, op=dist.ReduceOp.MAX)
        s = median(iso.tolist())
        rec = {"kind": "kernel", "op": op, "bytes": nbytes, "s": s}
        if op == "send_recv":
            rec["gbps"] = nbytes / s / 1e9
        else:
            rec["algbw_gbps"] = nbytes / s / 1e9
            rec["busbw_gbps"] = nbytes / s / 1e9 * busbw_factor(op, w)
        rec.update({"world": w, "s_stream": float(st), "repeats": reps, "dtype": "fp32", "hardware": self.hardware,
                    "backend": self.backend, "device": self.device})
        return [rec] if r == 0 else []
