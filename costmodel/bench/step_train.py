"""`train` cases of costmodel/bench/train_step.py: one optimizer step of a decoder LM (method in
train_step.py's docstring), on one GPU or under torchrun with DDP or FSDP2."""
from __future__ import annotations

import contextlib
import statistics
import time
import warnings

import torch

if __package__:
    from .step_device import Dev, framework_string, profile_summary
    from .step_models import ATTN_IMPLEMENTATIONS, decoder_layers, default_dtype, hf_model, model_record
else:  # run from a file path (see train_step.py): this folder is on sys.path
    from step_device import Dev, framework_string, profile_summary
    from step_models import ATTN_IMPLEMENTATIONS, decoder_layers, default_dtype, hf_model, model_record

WARMUP_STEPS = 3
TIMED_STEPS = 10


def release(state: dict):
    """Free parameter, gradient and optimizer-state storage of a finished case.

    Deleting the Python objects is not enough after DDP: on the H200 pair (torch 2.11) the
    parameters of a DDP-wrapped model outlived ``del`` and ``gc.collect()`` until well into the
    next case, inflating that case's ``weights_bytes``; emptying the storages frees them whoever
    still holds the Parameter objects.
    """
    opt, model = state.pop("opt", None), state.pop("model", None)
    if opt is not None:
        opt.state.clear()
    if model is not None:
        for p in model.parameters():
            p.grad = None
            try:
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
            except Exception:  # noqa: BLE001  (e.g. DTensor parameters under FSDP2)
                pass


def run_train(case: dict, spec: dict, dev: Dev, dist_info: dict, hold_outputs: bool, diag: dict):
    """The case's record; OOM and other errors propagate to the caller."""
    state: dict = {}
    try:
        return _train_body(case, spec, dev, dist_info, hold_outputs, diag, state)
    finally:
        release(state)


def _train_body(case, spec, dev, dist_info, hold_outputs, diag, state):
    world = dist_info["world"]
    precision = case.get("precision", "amp-bf16")
    recompute = case.get("recompute", "none")
    sharding = case.get("sharding", "none")
    mb, seq = int(case["micro_batch"]), int(case["seq_len"])
    warmup = int(case.get("warmup", WARMUP_STEPS))
    iters = int(case.get("iters", TIMED_STEPS))
    attention = case.get("attention", "flash")
    if precision not in ("amp-bf16", "amp-fp16", "bf16"):
        raise ValueError(f"precision {precision!r} not supported (amp-bf16, amp-fp16, bf16)")
    if recompute not in ("none", "selective", "full"):
        raise ValueError(f"recompute {recompute!r} not supported (none, selective, full)")
    if attention not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attention {attention!r} not supported (flash, standard)")

    cls, cfg = hf_model(spec, seq, attention, recompute)
    pdtype = torch.bfloat16 if precision == "bf16" else torch.float32
    # amp-fp16: fp16 autocast with dynamic loss scaling (torch.amp.GradScaler; with the fused
    # AdamW it unscales inside the optimizer kernel, after a non-finite check of every gradient)
    cast = torch.float16 if precision == "amp-fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(dev.kind) if precision == "amp-fp16" else None
    # collect the previous case first: a DDP module's reducer (gradient buckets) sits in reference
    # cycles that outlive its case until the garbage collector runs (run 23x: 3.9 GiB still allocated
    # when an FSDP case after a DDP one started, counted in its weights_bytes)
    dev.empty_cache()
    diag["baseline_bytes"] = dev.allocated()
    if diag["baseline_bytes"] > 512 * 2**20:
        diag["warning"] = "more than 512 MiB allocated before the model was built: a leftover"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with dev.device, default_dtype(pdtype):
            model = cls(cfg)
    state["model"] = model
    model.train()
    params = sum(p.numel() for p in model.parameters())
    if case.get("experts_implementation"):
        model.set_experts_implementation(case["experts_implementation"])
    diag["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    diag["experts_implementation"] = getattr(model.config, "_experts_implementation", None)
    diag["param_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
    dev.sync()
    diag["after_build_bytes"] = dev.allocated()
    if recompute == "full":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    diag["gradient_checkpointing"] = bool(getattr(model, "is_gradient_checkpointing", False))

    extra = ""
    weights_bytes = dev.allocated()
    before_wrap = None  # DDP: weights_bytes_before_wrap, allocated before the wrapper
    if world > 1:
        if sharding == "none":
            from torch.nn.parallel import DistributedDataParallel as DDP
            model = DDP(model, device_ids=[dev.device.index] if dev.kind == "cuda" else None)
            extra = "DDP"
            # weights_bytes is the model as it is trained, so as wrapped (as the truth records read
            # it, and as FSDP's is read after fully_shard): the constructor has allocated DDP's
            # gradient buckets; the same read as diag["after_wrap_bytes"]
            dev.sync()
            before_wrap, weights_bytes = weights_bytes, dev.allocated()
        elif sharding == "full":
            try:
                from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
            except ImportError:  # older torch
                from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            for layer in decoder_layers(model):
                fully_shard(layer, mp_policy=mp)
            fully_shard(model, mp_policy=mp)
            dev.empty_cache()
            weights_bytes = dev.allocated()
            extra = "FSDP2 fully_shard (param bf16, reduce fp32)"
        else:
            raise ValueError(f"sharding {sharding!r} not supported (none, full)")
        dev.sync()
        diag["after_wrap_bytes"] = dev.allocated()

    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        diag["optimizer"] = "AdamW fused"
    except Exception as e:  # noqa: BLE001  (fused unsupported for this param type)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        diag["optimizer"] = f"AdamW foreach (fused failed: {e})"
        extra = (extra + ", " if extra else "") + "foreach AdamW"
    state["opt"] = opt

    gen = torch.Generator(device="cpu").manual_seed(1234 + dist_info["rank"])
    ids = torch.randint(0, spec["vocab"], (mb, seq), generator=gen).to(dev.device)
    # SCHEMA.md global_batch: sequences per optimizer step over all ranks; more than micro_batch x
    # dp means gradient accumulation over `accum` micro-batches, the loss divided by accum. DDP
    # all-reduces on the last only (no_sync, as its docs recommend); FSDP2 reduce-scatters every
    # micro-batch (its default, and torchtitan's), unless the case sets "fsdp_sync": "last"
    # (set_requires_gradient_sync: unsharded gradients accumulate instead; run 23x measured so).
    gb = int(case.get("global_batch") or mb * world)
    if gb % (mb * world):
        raise ValueError(f"global_batch {gb} is not a multiple of micro_batch x dp = {mb * world}")
    accum = gb // (mb * world)
    diag["grad_accum"] = accum

    def micro(last: bool):
        sync = contextlib.nullcontext()
        if world > 1 and sharding == "none" and not last:
            sync = model.no_sync()
        elif world > 1 and sharding == "full" and case.get("fsdp_sync") == "last":
            model.set_requires_gradient_sync(last)
        with sync:
            with dev.autocast(cast):
                out = model(input_ids=ids, labels=ids)
            loss = out.loss if accum == 1 else out.loss / accum
            loss = loss if scaler is None else scaler.scale(loss)
            if not hold_outputs:
                del out
            loss.backward()

    def step():
        for i in range(accum):
            micro(i == accum - 1)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)

    barrier = dist_info["barrier"]
    for _ in range(warmup):
        step()
    dev.sync()
    barrier()
    steady = dev.allocated()
    dev.reset_peak()
    step()
    dev.sync()
    peak = dev.peak()
    times = []
    for _ in range(iters):
        barrier()
        dev.sync()
        t0 = time.perf_counter()
        step()
        dev.sync()
        times.append(time.perf_counter() - t0)
    diag["step_times_s"] = times
    diag["loss_last"] = None
    if case.get("profile"):
        diag["profile"] = profile_summary(step, dev)
    measured = {"weights_bytes": int(weights_bytes),
                **({"weights_bytes_before_wrap": int(before_wrap)} if before_wrap is not None else {}),
                "steady_bytes": int(steady),
                "peak_bytes": int(peak), "step_seconds": float(statistics.median(times))}
    rec = {
        "kind": "train",
        "name": case["name"],
        "model": model_record(spec, params),
        "hardware": dist_info["hardware"],
        "devices": world,
        "parallel": {"dp": world, "tp": 1, "pp": 1, "sharding": sharding},
        "micro_batch": mb,
        **({"global_batch": gb} if accum > 1 else {}),
        "seq_len": seq,
        "precision": precision,
        "optimizer": "adamw",
        "recompute": recompute,
        "attention": attention,
        "framework": framework_string(extra) + (", GradScaler" if scaler is not None else "")
        + (", gradients synchronised on the last micro-batch only" if accum > 1 and world > 1 and (
            sharding == "none" or case.get("fsdp_sync") == "last") else "")
        + (", eager attention" if attention == "standard" else ""),
        "measured": measured,
    }
    return rec


def train_skeleton(case, spec, dist_info):
    """Record fields known without building anything (used for OOM records)."""
    world = dist_info["world"]
    rec = {
        "kind": "train", "name": case["name"], "model": None, "hardware": dist_info["hardware"],
        "devices": world,
        "parallel": {"dp": world, "tp": 1, "pp": 1, "sharding": case.get("sharding", "none")},
        "micro_batch": int(case["micro_batch"]), "seq_len": int(case["seq_len"]),
        **({"global_batch": int(case["global_batch"])} if case.get("global_batch") else {}),
        "precision": case.get("precision", "amp-bf16"), "optimizer": "adamw",
        "recompute": case.get("recompute", "none"), "attention": case.get("attention", "flash"),
        "framework": framework_string({"none": "DDP", "full": "FSDP2 fully_shard (param bf16, reduce fp32)"}
                                      .get(case.get("sharding", "none"), "") if world > 1 else ""),
        "measured": {"oom": True},
    }
    return rec
