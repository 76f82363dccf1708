"""GPU-side entry point: ``python3 -m costmodel.bench.run_gpu --out DIR --tag h100``.

Imports only the standard library, numpy, torch and rich (no pydantic, no typer), so it runs on a
machine that has PyTorch but not the rest of costmodel's dependencies. Under ``torchrun`` it
measures the NCCL collectives; otherwise the single-GPU kernels. See runner.main for the flags.
"""
import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
