"""`costmodel serve`: an engine serving requests under load (continuous batching, costmodel.serving)."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from ..units import fmt_bytes, fmt_time
from .common import one_hardware, HardwareFileOpt, JsonOpt, console, emit_json, print_table


def serve_cmd(
    model: str = typer.Argument(..., help="Model preset id, preset YAML or HF config.json."),
    hardware: list[str] = typer.Option(["h100-sxm"], "--hardware", "-H",
                                       help="Device id; with --target-rate several to compare (repeat -H, or separate by commas)."),
    tp: Optional[int] = typer.Option(None, "--tp", help="Tensor-parallel size (default 1; with --target-rate: searched)."),
    ep: Optional[int] = typer.Option(None, "--ep", help="Expert-parallel size inside the TP group (MoE models)."),
    pp: Optional[int] = typer.Option(None, "--pp", help="Pipeline-parallel stages (of --tp devices each)."),
    dp_attention: bool = typer.Option(False, "--dp-attention", help="Data-parallel attention over the --tp devices (SGLang's --enable-dp-attention; MoE models)."),
    input_len: int = typer.Option(1024, "--input-len", help="Prompt tokens of every request."),
    output_len: int = typer.Option(128, "--output-len", help="Generated tokens of every request."),
    input_len_range: Optional[str] = typer.Option(None, "--input-len-range", help="LO:HI: every prompt's length drawn uniformly from LO..HI (seeded), in place of --input-len."),
    output_len_range: Optional[str] = typer.Option(None, "--output-len-range", help="LO:HI: every request's output length drawn uniformly from LO..HI, in place of --output-len."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Load: static batches of B requests."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Load: N requests in flight (closed loop)."),
    request_rate: Optional[float] = typer.Option(None, "--request-rate", help="Load: Poisson arrivals, requests/s."),
    max_load: bool = typer.Option(False, "--max-load", help="Load: every request queued at t=0."),
    num_requests: Optional[int] = typer.Option(None, "--num-requests", help="Requests to run (default: the batch, 10 x concurrency, or 1000)."),
    engine: str = typer.Option("vllm", "--engine", help="vllm, sglang or tensorrt-llm (data/engines/<engine>.yaml defaults)."),
    max_num_seqs: Optional[int] = typer.Option(None, "--max-num-seqs", help="Override the engine's running-sequence cap."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens-per-iteration", help="Override the engine's token budget per iteration."),
    weight_dtype: str = typer.Option("bf16", "--weight-dtype", help="bf16, fp16, fp8, int8, int4."),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype", help="KV-cache dtype."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Poisson arrivals."),
    spec_decode: Optional[str] = typer.Option(None, "--spec", help="Speculative decoding: mtp (the model's MTP module) or draft (--draft-model)."),
    spec_tokens: int = typer.Option(1, "--spec-tokens", help="Tokens drafted per step."),
    spec_acceptance: Optional[float] = typer.Option(None, "--spec-acceptance", help="Acceptance rate of a drafted token (mtp default 0.85, DeepSeek-V3 report)."),
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="Draft model preset id for --spec draft."),
    prefix_hit: float = typer.Option(0.0, "--prefix-hit-rate", help="Share of every prompt found in the prefix cache, [0, 1)."),
    ramp: str = typer.Option("steady", "--ramp", help="--concurrency: 'steady' (clients out of phase, steady state) or 'burst' (all start together, every request counted, as bench_serving)."),
    target_rate: Optional[float] = typer.Option(None, "--target-rate", help="Plan: replicas, layout and hardware serving R requests/s at the lowest price."),
    ttft_p99_ms: Optional[float] = typer.Option(None, "--ttft-p99-ms", help="Plan: p99 time to first token target (ms)."),
    tpot_p99_ms: Optional[float] = typer.Option(None, "--tpot-p99-ms", help="Plan: p99 time per output token target (ms)."),
    price_per_hour: Optional[float] = typer.Option(None, "--price-per-hour", help="Plan: USD per device-hour (default: the hardware spec's)."),
    calibration: Optional[str] = typer.Option(None, "--calibration"),
    json_out: bool = JsonOpt,
    hardware_file: Optional[list[str]] = HardwareFileOpt,
):
    """Throughput, TTFT, time between tokens and request latency of an engine under a load."""
    from ..arch import load_model
    from ..errors import InputError
    from ..serving import estimate_serve
    from ..specs import load_library

    hardware = ",".join(hardware)  # -H a -H b and -H a,b alike
    loads = {"batch": batch, "concurrency": concurrency, "request_rate": request_rate, "max_load": max_load or None}
    given = [k for k, v in loads.items() if v is not None]
    if target_rate is not None or ttft_p99_ms is not None or tpot_p99_ms is not None:
        if given:
            raise InputError("--target-rate plans its own load; leave out --batch, --concurrency, --request-rate and --max-load",
                             field="load")
        if target_rate is None or ttft_p99_ms is None:
            raise InputError("a plan needs both --target-rate and --ttft-p99-ms", field="target-rate" if target_rate is None else "ttft-p99-ms")
        _plan(model, hardware, tp, ep, pp, input_len, output_len, num_requests, engine, weight_dtype, kv_dtype, seed,
              prefix_hit, target_rate, ttft_p99_ms, tpot_p99_ms, price_per_hour, calibration, json_out, hardware_file,
              _range(input_len_range, "input-len-range"), _range(output_len_range, "output-len-range"), dp_attention)
        return
    if price_per_hour is not None:
        raise InputError("--price-per-hour is for plans (--target-rate); costs of a run use the hardware spec's price",
                         field="price-per-hour")
    tp, ep, pp = tp or 1, ep or 1, pp or 1
    m = load_model(model)  # an unknown model is named before a missing load
    if len(given) != 1:
        raise InputError("give exactly one load: --batch, --concurrency, --request-rate or --max-load", field="load")
    for name, val in (("weight-dtype", weight_dtype), ("kv-dtype", kv_dtype)):
        if val not in ("fp32", "bf16", "fp16", "fp8", "int8", "int4"):
            raise InputError(f"{val!r} is not one of fp32, bf16, fp16, fp8, int8, int4", field=name)
    if ramp not in ("steady", "burst"):
        raise InputError(f"{ramp!r} is not one of steady, burst", field="ramp")
    for name, val in (("tp", tp), ("ep", ep), ("pp", pp), ("input-len", input_len), ("output-len", output_len), ("num-requests", num_requests)):
        if val is not None and val < 1:
            raise InputError(f"must be >= 1 (got {val})", field=name)
    load = given[0]
    hardware = one_hardware(hardware.split(","))
    lib = load_library(hardware_file)
    spec = lib.device(hardware)
    est = estimate_serve(m, spec, tp=tp, input_len=input_len, output_len=output_len, load=load,
                         value=None if load == "max_load" else float(loads[load]), num_requests=num_requests,
                         engine=engine, weight_dtype=weight_dtype, kv_dtype=kv_dtype, node=lib.node_for(hardware),
                         calibration=calibration, seed=seed, max_num_seqs=max_num_seqs, max_tokens_per_iteration=max_tokens,
                         ramp=ramp, ep=ep, spec_decode=spec_decode, spec_tokens=spec_tokens,
                         spec_acceptance=spec_acceptance, draft_model=load_model(draft_model) if draft_model else None,
                         prefix_hit_rate=prefix_hit, pp=pp, input_len_range=_range(input_len_range, "input-len-range"),
                         output_len_range=_range(output_len_range, "output-len-range"), dp_attention=dp_attention)
    if json_out:
        emit_json(est.to_dict())
        return
    what = "max load" if load == "max_load" else f"{load.replace('_', ' ')} {loads[load]:g}"
    lens = "+".join(f"{r[0]}..{r[1]}" if r else str(n) for r, n in ((est.input_len_range, est.input_len),
                                                                   (est.output_len_range, est.output_len)))
    t = Table(title=f"{est.model_id} on {est.devices} x {est.hardware}, {est.engine}, {what}, "
                    f"{est.num_requests} x {lens} tokens")
    t.add_column("item")
    t.add_column("value", justify="right")
    t.add_row("output tokens/s (all devices)", f"{est.output_tokens_per_s:,.0f}")
    t.add_row("output tokens/s per device", f"{est.output_tokens_per_s_per_device:,.0f}")
    t.add_row("total tokens/s (all devices)", f"{est.total_tokens_per_s:,.0f}")
    t.add_row("requests/s", f"{est.requests_per_s:,.2f}")
    t.add_row("KV cache per device", fmt_bytes(est.kv_cache_bytes_per_device))
    t.add_row("KV cache tokens / full sequences", f"{est.kv_cache_tokens:,} / {est.kv_cache_sequences:,}")
    t.add_row("running sequences cap / tokens per iteration",
              f"{min(est.max_num_seqs, est.kv_cache_sequences) if est.max_num_seqs >= 1 << 30 else est.max_num_seqs:,} / "
              f"{est.max_tokens_per_iteration:,}")
    t.add_row("iterations / preemptions", f"{est.iterations:,} / {est.preemptions:,}")
    usd = est.usd_per_million_output_tokens
    t.add_row("$ / kWh per million output tokens",
              f"{'$' + format(usd, ',.2f') if usd else '- (no price)'} / {est.kwh_per_million_output_tokens:,.2f}")
    print_table(t)
    lat = Table(title="latency")
    for col in ("", "mean", "p50", "p90", "p99"):
        lat.add_column(col, justify="right")
    for name, st in (("TTFT", est.ttft_s), ("time between tokens", est.itl_s), ("request latency", est.e2e_s)):
        lat.add_row(name, *[fmt_time(st[k]) if st[k] is not None else "-" for k in ("mean", "p50", "p90", "p99")])
    print_table(lat)
    for note in est.notes:
        console.print(f"note: {note}", highlight=False)


def _range(text: Optional[str], field: str) -> Optional[tuple[int, int]]:
    """'LO:HI' -> (LO, HI), integers with 1 <= LO <= HI."""
    from ..errors import InputError

    if text is None:
        return None
    parts = text.split(":")
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"expected LO:HI, two integers (got {text!r})", field=field) from None
    if not 1 <= lo <= hi:
        raise InputError(f"expected 1 <= LO <= HI (got {text!r})", field=field)
    return lo, hi


def _plan(model, hardware, tp, ep, pp, input_len, output_len, num_requests, engine, weight_dtype, kv_dtype, seed,
          prefix_hit, target_rate, ttft_p99_ms, tpot_p99_ms, price_per_hour, calibration, json_out, hardware_file,
          input_len_range=None, output_len_range=None, dp_attention=False):
    """`serve --target-rate R --ttft-p99-ms X`: the cheapest replicas x layout x hardware (costmodel.serve_plan)."""
    from ..arch import load_model
    from ..errors import InputError
    from ..serve_plan import Layout, plan_serving
    from ..specs import load_library

    for name, val in (("weight-dtype", weight_dtype), ("kv-dtype", kv_dtype)):
        if val not in ("fp32", "bf16", "fp16", "fp8", "int8", "int4"):
            raise InputError(f"{val!r} is not one of fp32, bf16, fp16, fp8, int8, int4", field=name)
    for name, val in (("tp", tp), ("ep", ep), ("pp", pp), ("input-len", input_len), ("output-len", output_len)):
        if val is not None and val < 1:
            raise InputError(f"must be >= 1 (got {val})", field=name)
    ids = [h.strip() for h in hardware.split(",") if h.strip()]
    if not ids:
        raise InputError("expected one or more device ids separated by commas", field="hardware")
    if price_per_hour is not None and (len(ids) > 1 or price_per_hour < 0):
        raise InputError("--price-per-hour (>= 0) prices one hardware; give one -H", field="price-per-hour")
    lib = load_library(hardware_file)
    hw = [(lib.device(h), lib.node_for(h)) for h in ids]
    only = Layout(tp or 1, pp or 1, ep or 1, dp_attention) if (tp or pp or ep or dp_attention) else None
    plan = plan_serving(load_model(model), hw, target_rate=target_rate, ttft_p99_s=ttft_p99_ms / 1e3,
                        tpot_p99_s=tpot_p99_ms / 1e3 if tpot_p99_ms is not None else None, input_len=input_len,
                        output_len=output_len, engine=engine, weight_dtype=weight_dtype, kv_dtype=kv_dtype,
                        num_requests=num_requests or 500, calibration=calibration, seed=seed, only=only,
                        price_per_hour=price_per_hour, prefix_hit_rate=prefix_hit, input_len_range=input_len_range,
                        output_len_range=output_len_range)
    if json_out:
        emit_json(plan.to_dict())
    else:
        tgt = f"p99 TTFT {ttft_p99_ms:g} ms" + (f", p99 TPOT {tpot_p99_ms:g} ms" if tpot_p99_ms is not None else "")
        t = Table(title=f"{plan.model_id} ({engine}), {target_rate:g} req/s of {input_len}+{output_len} tokens, {tgt}")
        for col in ("hardware", "layout", "req/s/rep", "reps", "$/hour", "TTFT p99", "TPOT p99"):
            t.add_column(col, justify="left" if col in ("hardware", "layout") else "right")
        rank = sorted(plan.candidates, key=lambda c: (not c.feasible, c.usd_per_hour if c.usd_per_hour is not None
                                                      else float("inf"), c.devices or 0, -c.max_rate_per_replica))
        for c in rank:
            if c.feasible:
                t.add_row(("* " if c is plan.best else "") + c.hardware, c.label(), f"{c.max_rate_per_replica:.3g}",
                          f"{c.replicas:,}", f"{c.usd_per_hour:,.2f}" if c.usd_per_hour is not None else "-",
                          f"{c.ttft_p99_s * 1e3:,.0f} ms",
                          f"{c.tpot_p99_s * 1e3:,.1f} ms" if c.tpot_p99_s is not None else "-")
            else:
                t.add_row(c.hardware, c.label(), "0", "-", "-", "-", "-")
        print_table(t)
        for c in rank:
            if not c.feasible:
                console.print(f"{c.hardware} {c.label()}: {c.reason}", highlight=False)
        b = plan.best
        if b is not None:
            usd = (f", ${b.usd_per_hour:,.2f}/hour, ${b.usd_per_million_output_tokens:,.2f} per million output tokens"
                   if b.usd_per_hour is not None else "")
            console.print(f"cheapest: {b.replicas} x {b.label()} on {b.hardware} ({b.devices} devices{usd})", highlight=False)
        else:
            console.print("no layout meets the targets", highlight=False)
        for note in plan.notes:
            console.print(f"note: {note}", highlight=False)
    if not plan.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
