#!/usr/bin/env python3
"""Measure LLM training steps and decode steps on a GPU, writing truth records.

Standalone: imports only torch, transformers, numpy and the standard library, so that it runs on
a GPU machine that has no pydantic. Run it as a file path there (the package ``costmodel``'s
``__init__`` imports pydantic):

    python3 costmodel/bench/train_step.py --config CASES.json --out OUT.jsonl
    torchrun --nproc_per_node 2 costmodel/bench/train_step.py --config CASES.json --out OUT.jsonl

``python3 -m costmodel.bench.train_step`` works too where costmodel's own dependencies are installed.

Records follow shared/truth/SCHEMA.md (kinds ``train``, ``decode_step`` and ``infer``). Beside OUT.jsonl the
script writes OUT.diag.jsonl (one line per case: the case as given, every step time, memory at
each stage, errors, comparison with ``expect`` values) and OUT.env.json (versions, driver, GPU).

Method for ``train`` (one optimizer step of a decoder LM with next-token cross-entropy):
  * model built from a transformers config (LlamaForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel,
    MixtralForCausalLM) with attn_implementation="sdpa", no dropout, use_cache=False, directly on
    the GPU (``with torch.device("cuda")``), in fp32 for ``amp-bf16`` and in bf16 for ``bf16``;
  * ``weights_bytes`` = torch.cuda.memory_allocated() after building the model as it is trained:
    after ``fully_shard`` for FSDP, after the DDP wrapper for DDP (whose constructor allocates the
    gradient buckets, 4 bytes/param under amp); DDP records also keep the figure before the wrapper
    as ``weights_bytes_before_wrap``;
  * torch.optim.AdamW(fused=True), lr 1e-4; optimizer states take the parameters' dtype;
  * a step: forward under torch.autocast("cuda", bfloat16) with ``labels=input_ids`` (random
    token ids, HF shifts them: next-token CE over the whole sequence), ``loss.backward()``,
    ``optimizer.step()``, ``optimizer.zero_grad(set_to_none=True)``; by default the model's output
    object is dropped before backward (``--hold-outputs yes`` keeps it, with its logits, until the
    step ends; ``auto`` measures both on the cases that carry ``expect`` values and keeps the
    closer one for the rest);
  * recompute ``full``: model.gradient_checkpointing_enable(use_reentrant=False);
  * WARMUP steps (3), then ``steady_bytes`` = memory_allocated() (after zero_grad), then
    reset_peak_memory_stats(), one step, ``peak_bytes`` = max_memory_allocated(); then ITERS (10)
    steps each timed on the host clock between torch.cuda.synchronize() calls (plus a barrier before
    each under torchrun): ``step_seconds`` = their median;
  * several GPUs (torchrun): DDP (sharding ``none``, default bucket settings) or FSDP2
    ``fully_shard`` on every decoder layer and the root with
    MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32) (sharding ``full``); memory figures
    are rank 0's, step time is rank 0's median;
  * an out-of-memory error anywhere in a case gives ``"measured": {"oom": true}``.
All cases of one run share one process, as a sweep would: allocations that outlive a case
(cuBLAS workspaces held by the caching allocator) show in later cases' figures (the diag file
gives ``baseline_bytes``, memory allocated before the case's model was built).

Method for ``decode_step`` (llama-style models only): a hand-written bf16 decoder step with a static
KV cache of ``context_len`` positions (filled with random values; the new token is written at the
last position), fused QKV and gate/up projections, SDPA over the whole cache, final norm, LM head
and argmax, captured in one CUDA graph; ``step_seconds`` = median of CUDA-event timed replays,
``peak_bytes`` = max_memory_allocated over the whole case (weights, cache, capture, replays),
``kv_cache_bytes`` = the cache's size.

Config file (JSON):
  {"models": {"llama-1.3b": {"arch": "llama", "layers": 24, "hidden": 2048, "heads": 16,
                             "kv_heads": 16, "ffn": 5504, "vocab": 32000,
                             "tied_embeddings": false}, ...},
   "defaults": {"precision": "amp-bf16", "recompute": "none", ...},
   "cases": [{"kind": "train", "model": "llama-1.3b", "micro_batch": 4, "seq_len": 1024,
              "precision": "amp-bf16", "recompute": "none", "devices": 1, "sharding": "none",
              "expect": {"peak_bytes": ...}},
             {"kind": "decode_step", "model": "llama-1.3b", "batch": 8, "context_len": 2049}]}
Model fields: arch (llama | qwen2 | gpt2 | mixtral), layers, hidden, heads, kv_heads, ffn, vocab,
tied_embeddings, and moe_experts / moe_top_k for mixtral, max_positions for gpt2 (default 1024).
A case runs only where its ``devices`` (default 1) equals the number of processes.

This file is the driver (cases, output files, torchrun); the measurements live beside it, each
importable on its own: ``step_train.py`` (train cases), ``step_decode.py`` (decode steps),
``step_infer.py`` (eager inference), ``step_models.py`` (building the models, parameter counts,
the record's model field) and ``step_device.py`` (device calls, environment, profiler summaries).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback

if __package__:
    from .step_decode import run_decode
    from .step_device import Dev, environment, framework_string, hardware_id, is_oom
    from .step_infer import infer_record, run_infer
    from .step_models import count_params, decode_params, model_record
    from .step_train import run_train, train_skeleton
else:  # run from a file path (see above): this folder is on sys.path
    from step_decode import run_decode
    from step_device import Dev, environment, framework_string, hardware_id, is_oom
    from step_infer import infer_record, run_infer
    from step_models import count_params, decode_params, model_record
    from step_train import run_train, train_skeleton


# ----------------------------------------------------------------------------- driver


def case_name(case: dict, world: int) -> str:
    if case.get("name"):
        return case["name"]
    if case["kind"] == "decode_step":
        return f"{case['model']}/b{case['batch']}/ctx{case['context_len']}"
    if case["kind"] == "infer":
        return f"{case['model']}/infer/b{case['batch']}/p{case['prompt_len']}"
    par = ""
    if world > 1:
        par = f"/dp{world}-{'ddp' if case.get('sharding', 'none') == 'none' else 'fsdp'}"
    att = "/standard" if case.get("attention", "flash") == "standard" else ""
    gb = f"/gb{case['global_batch']}" if case.get("global_batch") else ""
    return (f"{case['model']}/{case.get('precision', 'amp-bf16')}{par}/b{case['micro_batch']}{gb}"
            f"/s{case['seq_len']}/{case.get('recompute', 'none')}{att}")


def compare(rec: dict, expect: dict) -> dict:
    out = {}
    meas = rec.get("measured", {})
    for k, v in expect.items():
        if k in meas and isinstance(v, (int, float)) and v:
            out[k] = {"measured": meas[k], "expected": v, "ratio": meas[k] / v}
    return out


class Writer:
    def __init__(self, out: str, rank: int):
        self.rank = rank
        base = out[:-len(".jsonl")] if out.endswith(".jsonl") else out
        self.out, self.diag, self.env = out, base + ".diag.jsonl", base + ".env.json"
        if rank == 0:
            d = os.path.dirname(os.path.abspath(out))
            os.makedirs(d, exist_ok=True)

    def _append(self, path, obj):
        if self.rank != 0:
            return
        with open(path, "a") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def record(self, rec):
        self._append(self.out, rec)

    def diagnostic(self, d):
        self._append(self.diag, d)

    def environment(self, env):
        if self.rank == 0:
            with open(self.env, "w") as f:
                json.dump(env, f, indent=1)


def run_case(case, spec, dev, dist_info, hold_outputs, writer, write_record=True):
    diag = {"name": case["name"], "case": case, "hold_outputs": hold_outputs}
    t0 = time.perf_counter()
    rec = None
    err = None
    try:
        if case["kind"] == "train":
            rec = run_train(case, spec, dev, dist_info, hold_outputs, diag)
        elif case["kind"] == "decode_step":
            rec = run_decode(case, spec, dev, dist_info, diag)
        elif case["kind"] == "infer":
            rec = run_infer(case, spec, dev, dist_info, diag)
        else:
            raise ValueError(f"unknown kind {case['kind']!r}")
    except Exception as e:  # noqa: BLE001
        if is_oom(e):
            err = "oom"
            diag["oom_message"] = str(e).splitlines()[0][:300]
        else:
            err = "error"
            diag["error"] = traceback.format_exc()[-3000:]
    # release everything the case left (traceback frames are gone once the except block ended)
    dev.empty_cache()
    if err == "oom":
        if case["kind"] == "train":
            rec = train_skeleton(case, spec, dist_info)
            try:
                rec["model"] = model_record(spec, count_params(spec, int(case["seq_len"])))
            except Exception as e:  # noqa: BLE001
                diag["param_count_error"] = str(e)
        elif case["kind"] == "infer":
            rec = infer_record(case, dist_info, model_record(spec, count_params(spec, int(case["prompt_len"]))),
                               {"oom": True})
        else:
            rec = {"kind": "decode_step", "name": case["name"], "hardware": dist_info["hardware"],
                   "devices": 1, "batch": int(case["batch"]), "context_len": int(case["context_len"]),
                   "weights_dtype": "bf16", "kv_dtype": "bf16",
                   "framework": framework_string().split(" transformers")[0]
                   + " static KV cache, whole step in one CUDA graph",
                   "model": model_record(spec, decode_params(spec)), "measured": {"oom": True}}
    diag["wall_s"] = time.perf_counter() - t0
    diag["after_case_bytes"] = dev.allocated()
    if rec is not None and case.get("expect"):
        diag["compare"] = compare(rec, case["expect"])
    if rec is not None and write_record:
        writer.record(rec)
    if rec is not None:
        diag["record"] = rec
    writer.diagnostic(diag)
    if dist_info["rank"] == 0:
        m = rec["measured"] if rec else {"error": True}
        short = " ".join(f"{k}={v / 2**30:.3f}GiB" if k.endswith("_bytes") else f"{k}={v:.4g}"
                         if isinstance(v, float) else f"{k}={v}" for k, v in m.items())
        print(f"[{diag['wall_s']:6.1f}s] {case['name']} hold={int(hold_outputs)}: {short}", flush=True)
        if err == "error":
            print(diag["error"], flush=True)
        for k, c in diag.get("compare", {}).items():
            print(f"      vs public {k}: measured {c['measured']} expected {c['expected']} "
                  f"ratio {c['ratio']:.4f}", flush=True)
    return rec, diag


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="JSON file: models, defaults, cases")
    ap.add_argument("--out", required=True, help="records are appended here (JSON lines)")
    ap.add_argument("--only", default=None, help="run only cases whose name contains this")
    ap.add_argument("--kinds", default="train,decode_step,infer", help="comma list of kinds to run")
    ap.add_argument("--hold-outputs", choices=["no", "yes", "auto"], default="no",
                    help="keep the forward's output object alive until the step ends")
    ap.add_argument("--hardware", default=None, help="override the hardware id")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu only to exercise the logic (memory figures read 0)")
    args = ap.parse_args(argv)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = Dev(args.device, local_rank)
    barrier = (lambda: None)
    if world > 1:
        import torch.distributed as dist
        backend = "nccl" if args.device == "cuda" else "gloo"
        kw = {"device_id": dev.device} if args.device == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=300), **kw)

        def barrier():
            dist.barrier()

    dist_info = {"world": world, "rank": rank, "barrier": barrier,
                 "hardware": args.hardware or hardware_id(dev)}
    writer = Writer(args.out, rank)
    env = environment(dev, world)
    env["argv"] = sys.argv
    writer.environment(env)
    if rank == 0:
        print(json.dumps(env), flush=True)

    with open(args.config) as f:
        config = json.load(f)
    models = config.get("models", {})
    defaults = config.get("defaults", {})
    kinds = set(args.kinds.split(","))
    cases = []
    for c in config["cases"]:
        case = dict(defaults)
        case.update(c)
        case.setdefault("kind", "train")
        if int(case.get("devices", 1)) != world or case["kind"] not in kinds:
            continue
        case["name"] = case_name(case, world)
        if args.only and args.only not in case["name"]:
            continue
        spec = case["model"] if isinstance(case["model"], dict) else models[case["model"]]
        cases.append((case, spec))

    hold = args.hold_outputs == "yes"
    if args.hold_outputs == "auto":
        refs = [(c, s) for c, s in cases if c.get("expect") and c["kind"] == "train"]
        err = {False: 0.0, True: 0.0}
        results = {}
        for c, s in refs:
            for h in (False, True):
                rec, _ = run_case(c, s, dev, dist_info, h, writer, write_record=False)
                results[(c["name"], h)] = rec
                if rec and "peak_bytes" in rec["measured"]:
                    for k in ("peak_bytes", "steady_bytes"):
                        if k in c["expect"]:
                            err[h] += abs(rec["measured"][k] / c["expect"][k] - 1.0)
        hold = err[True] < err[False]
        if rank == 0:
            print(f"auto hold-outputs: relative error sum no={err[False]:.4f} yes={err[True]:.4f}"
                  f" -> {'yes' if hold else 'no'}", flush=True)
        env["hold_outputs_auto"] = {"error_no": err[False], "error_yes": err[True], "chosen": hold}
        writer.environment(env)
        for c, s in refs:
            rec = results[(c["name"], hold)]
            if rec is not None:
                writer.record(rec)
        done = {c["name"] for c, _ in refs}
        cases = [(c, s) for c, s in cases if c["name"] not in done]

    for case, spec in cases:
        run_case(case, spec, dev, dist_info, hold, writer)

    if world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        print("done", flush=True)


if __name__ == "__main__":
    main()
