#!/usr/bin/env python3
"""Per-call time of costmodel's train/infer estimates beside llm-analysis's, on the same jobs, in
one run on one machine.

    python -m venv /tmp/lla && /tmp/lla/bin/pip install llm-analysis     # not a costmodel dependency
    python tools/compare_llm_analysis.py --llm-analysis-python /tmp/lla/bin/python [--rounds 5] [--json]

The jobs (the same figures given to both tools):
- train: Llama 2 7B on 8 H100 SXM (one DGX H100), tp 2, pp 2, dp 2, global batch 64, sequence 4096,
  micro-batch 1 (llm-analysis: NousResearch_Llama-2-7b-hf on h100-sxm-80gb, w16a16e16)
- infer: Llama 2 7B on one H100 SXM, batch 1, prompt 1024, 128 generated tokens

Each tool runs in its own process (llm-analysis in the interpreter given, costmodel in this one),
the two alternating round by round so that both see the same load. A process makes one call to
warm up (inputs parsed, imports done), then times batches of calls with time.perf_counter and
reports the fastest batch's mean. costmodel is timed twice: as a repeated call costs (its
estimate remembered per inputs, a copy returned), computed (the remembered estimates cleared
before every call; inputs parsed and GEMM times memoised) and first-time (the job's sequence
length, or prompt length, one token different on every call: no estimate and no GEMM shape seen
before). llm-analysis computes every call.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One child process: time `calls` calls of each named job, `batches` times; print {job: seconds per call}.
_CHILD = r"""
import json, sys, time
calls, batches = int(sys.argv[1]), int(sys.argv[2])
jobs = {}
if sys.argv[3] == "costmodel":
    sys.path.insert(0, sys.argv[4])
    from costmodel import plan
    TRAIN = dict(tp=2, pp=2, global_batch=64, seq_len=4096, micro_batch=1)
    def train_fresh():
        plan._ESTIMATES.clear()
        return plan.train("llama2-7b", "dgx-h100", **TRAIN)
    def infer_fresh():
        plan._ESTIMATES.clear()
        return plan.infer("llama2-7b", "h100-sxm", batch=1, prompt_len=1024, gen_len=128)
    jobs["train"] = lambda: plan.train("llama2-7b", "dgx-h100", **TRAIN)
    jobs["infer"] = lambda: plan.infer("llama2-7b", "h100-sxm", batch=1, prompt_len=1024, gen_len=128)
    jobs["train_computed"] = train_fresh
    jobs["infer_computed"] = infer_fresh
    # a first-time estimate: the sequence (train) or prompt (infer) one token different every call,
    # so that neither the estimate nor any of its GEMM shapes has been seen
    import itertools
    new = itertools.count(1)
    jobs["train_first"] = lambda: plan.train("llama2-7b", "dgx-h100", **{**TRAIN, "seq_len": 4096 - next(new)})
    jobs["infer_first"] = lambda: plan.infer("llama2-7b", "h100-sxm", batch=1, prompt_len=512 + next(new), gen_len=128)
else:
    from llm_analysis import analysis
    M, G = "NousResearch_Llama-2-7b-hf", "h100-sxm-80gb"
    jobs["train"] = lambda: analysis.train(M, G, "w16a16e16", log_level="ERROR", batch_size_per_gpu=1,
                                           global_batch_size=64, seq_len=4096, tp_size=2, pp_size=2, total_num_gpus=8)
    jobs["infer"] = lambda: analysis.infer(M, G, "w16a16e16", log_level="ERROR", batch_size_per_gpu=1,
                                           seq_len=1024, num_tokens_to_generate=128)
out = {}
for name, fn in jobs.items():
    fn()
    best = float("inf")
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    out[name] = best
print(json.dumps(out))
"""


def _child(python: str, tool: str, calls: int, batches: int) -> dict[str, float]:
    args = [python, "-c", _CHILD, str(calls), str(batches), tool] + ([str(ROOT)] if tool == "costmodel" else [])
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT if tool == "costmodel" else "/")
    if res.returncode != 0:
        raise SystemExit(f"{tool} ({python}) failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def compare(llm_analysis_python: str, rounds: int = 5, calls: int = 200, batches: int = 5) -> dict:
    """The fastest per-call seconds of each job over ``rounds`` alternating rounds, and the ratios."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for tool, py in (("costmodel", sys.executable), ("llm-analysis", llm_analysis_python)):
            for job, s in _child(py, tool, calls, batches).items():
                key = f"{tool}:{job}"
                best[key] = min(best.get(key, float("inf")), s)
    ratios = {f"{job}": best[f"llm-analysis:{job}"] / best[f"costmodel:{job}"] for job in ("train", "infer")}
    ratios.update({f"{job}_{kind}": best[f"llm-analysis:{job}"] / best[f"costmodel:{job}_{kind}"]
                   for job in ("train", "infer") for kind in ("computed", "first")})
    try:
        load = Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        load = None
    return {"seconds_per_call": best, "llm_analysis_over_costmodel": ratios, "rounds": rounds, "calls": calls,
            "batches": batches, "loadavg_1min": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llm-analysis-python", required=True, help="an interpreter with llm-analysis installed")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200, help="calls per timed batch")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = compare(a.llm_analysis_python, a.rounds, a.calls)
    if a.json:
        print(json.dumps(res, indent=2))
        return
    s = res["seconds_per_call"]
    print(f"per call, fastest of {a.rounds} rounds (load {res['loadavg_1min']}):")
    for job in ("train", "infer"):
        print(f"  {job}: costmodel {s[f'costmodel:{job}'] * 1e6:8.1f} us repeated, "
              f"{s[f'costmodel:{job}_computed'] * 1e6:8.1f} us computed, {s[f'costmodel:{job}_first'] * 1e6:8.1f} us first-time; "
              f"llm-analysis {s[f'llm-analysis:{job}'] * 1e6:8.1f} us")
    r = res["llm_analysis_over_costmodel"]
    print(f"  llm-analysis / costmodel: train {r['train']:.2f}x repeated, {r['train_computed']:.2f}x computed, "
          f"{r['train_first']:.2f}x first-time; infer {r['infer']:.2f}x repeated, {r['infer_computed']:.2f}x computed, "
          f"{r['infer_first']:.2f}x first-time")


if __name__ == "__main__":
    main()
