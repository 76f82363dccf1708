"""LLM-shaped fp32 GEMMs (true fp32, no TF32) with few rows (m = 1..256), timed the torch harness's way
(``TorchBench.gemm``: rotated inputs, isolated calls and back-to-back), in 3 shuffled rounds, median
kept. fp32 runs at ~1/15 of the bf16 rate, so its compute/memory ridge lies at ~18 FLOP/byte and a
GEMM of m = 8..64 rows is neither purely memory- nor compute-bound: the shapes where a small-tile
half-point ``x_half`` (rate x min(m, n) / (min(m, n) + x_half)) would set the time (they did not pin
one; the fits no longer carry it) and where an output of few tiles is split along k. The
harness's own grids time fp32 only on square shapes (m >= 256), where it does not.

    python3 costmodel/bench/gemm_fp32_small_m.py OUT.jsonl
"""
import sys
from pathlib import Path


def main(out: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from costmodel.bench.gemm_small_k import time_gemm_shapes

    time_gemm_shapes(out, "fp32", [(m, n, k) for (k, n) in ((4096, 14336), (8192, 28672), (4096, 4096))
                                   for m in (1, 4, 8, 16, 32, 64, 128, 256)])


if __name__ == "__main__":
    main(sys.argv[1])
