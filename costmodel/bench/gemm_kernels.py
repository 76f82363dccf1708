"""Diagnostic: which cuBLAS kernel (and so which output tile) PyTorch runs for each GEMM shape of the
torch harness's grid (torch only; run as a file on a GPU machine).

For every (op, dtype, m, n, k) of ``TorchBench.gemm_shapes`` the product is run the harness's way
(``torch.mm(A, B, out=C)``, fp8 through ``torch._scaled_mm``) a few times, then once under
torch.profiler; one JSON line per shape gives the device kernels of that call with their times.
cuBLAS names its Hopper kernels after the CTA tile (``nvjet_sm90_tst_168x128_64x5_1x2...``: a
168 x 128 tile, 64-deep k stages, 5 stages, 1x2 cluster), which the calibration's wave
quantisation has to guess otherwise.

    python3 costmodel/bench/gemm_kernels.py OUT.jsonl
"""
import json
import sys

import torch


def main(out: str) -> None:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    from costmodel.bench.torch_backend import TorchBench

    bench = TorchBench()
    rows = []
    for op, dt, m, n, k in bench.gemm_shapes():
        torch.set_float32_matmul_precision("high" if dt == "tf32" else "highest")
        if dt == "fp8":
            f8 = torch.float8_e4m3fn
            A = torch.randn(m, k, device="cuda").to(f8)
            Bt = torch.randn(n, k, device="cuda").to(f8)
            one = torch.ones((), device="cuda")

            def fn():
                torch._scaled_mm(A, Bt.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        else:
            tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}[dt]
            A = torch.randn(m, k, device="cuda", dtype=tdt)
            B = torch.randn(k, n, device="cuda", dtype=tdt)
            C = torch.empty(m, n, device="cuda", dtype=tdt)

            def fn():
                torch.mm(A, B, out=C)
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        kernels = [{"name": e.name, "us": e.device_time_total} for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA]
        row = {"op": op, "dtype": dt, "m": m, "n": n, "k": k, "kernels": kernels}
        rows.append(row)
        print(json.dumps({**row, "kernels": [x["name"][:60] for x in kernels]}), flush=True)
    torch.set_float32_matmul_precision("highest")
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
