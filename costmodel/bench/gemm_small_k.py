"""LLM-shaped bf16 GEMMs with a short k (1024-2048: the projections of 350M-1.3B models), timed the
torch harness's way (``TorchBench.gemm``: rotated inputs, isolated calls and back-to-back), in 3
shuffled rounds, median kept. The shipped H100 curve's k ramp was fitted on k >= 4096 only.

    python3 costmodel/bench/gemm_small_k.py OUT.jsonl
"""
import random
import sys
from pathlib import Path


def time_gemm_shapes(out: str, dtype: str, shapes: list[tuple[int, int, int]], rounds: int = 3) -> None:
    """Time ``shapes`` (m, n, k) of ``dtype`` with the torch harness in ``rounds`` shuffled rounds,
    write the per-shape medians (records.merge_rounds) to ``out`` and print them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from costmodel.bench.records import merge_rounds, write_jsonl
    from costmodel.bench.torch_backend import TorchBench

    bench = TorchBench()
    raw = []
    for rnd in range(rounds):
        order = list(shapes)
        random.Random(rnd).shuffle(order)
        raw += [dict(bench.gemm("gemm_llm", dtype, m, n, k), round=rnd) for m, n, k in order]
    merged = merge_rounds(raw)
    write_jsonl(merged, out)
    for rec in merged:
        print(f"{(rec['m'], rec['n'], rec['k'])}: {rec['s'] * 1e6:.1f} us, stream {rec['s_stream'] * 1e6:.1f} us, "
              f"{rec['tflops']:.3g} TFLOP/s", flush=True)


def main(out: str) -> None:
    time_gemm_shapes(out, "bf16", [(m, n, k) for (k, n) in ((1024, 1024), (1024, 4096), (2048, 6144), (2048, 11008),
                                                              (2048, 2048), (5504, 2048))
                                   for m in (1024, 2048, 4096, 8192, 16384, 32768)])


if __name__ == "__main__":
    main(sys.argv[1])
