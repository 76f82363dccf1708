"""`costmodel search`: every valid training layout, ranked; the rejected regions and why."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from ..errors import InputError
from ..plots import layout_label
from ..units import fmt_time
from .common import HardwareFileOpt, JsonOpt, console, emit_json, err_console, print_table, styled, check_plot, wrote_plot


# Largest value of a restricted axis (tp, pp, batch, ...): the int32 range, as every count.
MAX_VALUE = 2**31 - 1


def _ints(text: Optional[str], field: str, minimum: int = 1, maximum: int = MAX_VALUE) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        vals = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"{_short(text)}: expected a comma-separated list of integers, e.g. 1,2,4,8", field=field) from None
    if not vals or any(v < minimum for v in vals):
        raise InputError(f"{_short(text)}: expected integers >= {minimum}", field=field)
    if any(v > maximum for v in vals):
        raise InputError(f"{_short(text)}: expected integers <= {maximum}", field=field)
    return vals


def _short(text: str, n: int = 60) -> str:
    """A long argument, cut for a one-line message."""
    return repr(text) if len(text) <= n else repr(text[:n]) + f"... ({len(text)} characters)"


def _choice(text: str, field: str) -> Optional[list[bool]]:
    if text == "both":
        return None
    if text in ("on", "off"):
        return [text == "on"]
    raise InputError(f"{text!r} is not one of on, off, both", field=field)


def search_cmd(
    model: str = typer.Argument(..., help="Model preset id, preset YAML or HF config.json."),
    hardware: list[str] = typer.Option(["dgx-h100"], "--hardware", "-H",
                                       help="Device or node id; repeat to compare hardware."),
    devices: str = typer.Option("8", help="Device count: N, N1,N2,... or LO..HI (powers of two in the range)."),
    global_batch: Optional[int] = typer.Option(None, "--global-batch", "--global-batch-size", help="Sequences per optimizer step (training)."),
    infer: bool = typer.Option(False, "--infer", help="Search serving layouts (hardware, tp, batch, weight/KV dtype) instead."),
    prompt_len: int = typer.Option(1024, "--prompt-len", "--input-len", help="--infer: prompt tokens."),
    gen_len: int = typer.Option(256, "--gen-len", "--output-len", help="--infer: generated tokens."),
    max_ttft_ms: Optional[float] = typer.Option(None, "--max-ttft-ms", help="--infer: time-to-first-token target "
                                                "(under a load: p99 over the requests)."),
    max_tpot_ms: Optional[float] = typer.Option(None, "--max-tpot-ms", help="--infer: per-token latency target "
                                                "(under a load: p99)."),
    request_rate: Optional[float] = typer.Option(None, "--request-rate", help="--infer under a load: Poisson arrivals, "
                                                 "requests/s, through the serving model (costmodel serve)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="--infer under a load: N requests in flight."),
    max_load: bool = typer.Option(False, "--max-load", help="--infer under a load: every request queued at t=0."),
    engine: Optional[str] = typer.Option(None, "--engine", help="--infer under a load: vllm (default), sglang, tensorrt-llm."),
    num_requests: Optional[int] = typer.Option(None, "--num-requests", help="--infer under a load: requests simulated "
                                               "per layout (default 500, or 10 x concurrency)."),
    batch: Optional[str] = typer.Option(None, help="--infer: restrict batch sizes."),
    weight_dtype: Optional[str] = typer.Option(None, "--weight-dtype", help="--infer: restrict weight dtypes, e.g. bf16,fp8."),
    kv_dtype: Optional[str] = typer.Option(None, "--kv-dtype", help="--infer: restrict KV-cache dtypes."),
    seq_len: int = typer.Option(2048, "--seq-len", "--seq-length", help="Tokens per sequence (training)."),
    objective: Optional[str] = typer.Option(None, help="Training: step_time (default), time_to_train, cost, mfu, throughput. "
                                                        "--infer: throughput (default, per device), cost, tpot; under a load also ttft."),
    top: int = typer.Option(10, help="Layouts to print."),
    precision: str = typer.Option("amp-bf16", help="fp32, amp-bf16, amp-fp16, bf16, fp8."),
    optimizer: str = typer.Option("adamw"),
    framework: Optional[str] = typer.Option(None, help="Framework: megatron (default, as train), pytorch, deepspeed, torchtitan, nanotron (any case)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Framework profile YAML (from fit-profile) that times the layouts."),
    attention: str = typer.Option("flash", help="flash or standard (materialised scores)."),
    overlap_grad_reduce: bool = typer.Option(True, "--overlap-grad-reduce/--no-overlap-grad-reduce",
                                             help="Overlap the data-parallel gradient reduction with backward."),
    tp_comm_overlap: bool = typer.Option(False, "--tp-comm-overlap",
                                         help="Megatron-LM's TP communication overlapped with the GEMMs (layouts with tp > 1 need sequence parallelism)."),
    grad_reduce_in_bf16: bool = typer.Option(False, "--grad-reduce-in-bf16",
                                             help="Megatron-LM's gradient buffers and data-parallel reduction in bf16 (else fp32)."),
    moe_enable_deepep: bool = typer.Option(False, "--moe-enable-deepep",
                                           help="MoE all-to-alls through DeepEP: one copy of a token per node across the network."),
    tokens: Optional[float] = typer.Option(None, help="Tokens of the whole run (for days and cost)."),
    steps: Optional[int] = typer.Option(None, help="Steps of the whole run (alternative to --tokens)."),
    price_per_hour: Optional[float] = typer.Option(None, "--price-per-hour", help="USD per device-hour (default: spec)."),
    max_memory_fraction: float = typer.Option(1.0, "--max-memory-fraction", help="Usable share of device memory."),
    tp: Optional[str] = typer.Option(None, "--tp", "--tensor-model-parallel-size", help="Restrict tp, e.g. 4,8."),
    pp: Optional[str] = typer.Option(None, "--pp", "--pipeline-model-parallel-size", help="Restrict pp."),
    interleave: Optional[str] = typer.Option(None, help="Restrict virtual pipeline stages."),
    cp: Optional[str] = typer.Option(None, "--cp", "--context-parallel-size", help="Restrict context parallelism."),
    ep: Optional[str] = typer.Option(None, "--ep", "--expert-model-parallel-size", help="Restrict expert parallelism."),
    etp: Optional[int] = typer.Option(None, "--etp", "--expert-tensor-parallel-size",
                                      help="Every layout's expert tensor-parallel size where it divides tp (1 folds tp into ep; default: tp)."),
    zero_stage: Optional[str] = typer.Option(None, "--zero-stage", help="Restrict ZeRO stages, e.g. 0,1."),
    micro_batch: Optional[str] = typer.Option(None, "--micro-batch", "--micro-batch-size", help="Restrict micro-batch sizes."),
    recompute: Optional[str] = typer.Option(None, help="Restrict recompute modes, e.g. none,selective."),
    sequence_parallel: Optional[bool] = typer.Option(None, "--sequence-parallel/--no-sequence-parallel",
                                                     help="Only layouts with (without) sequence parallelism; neither: both, as "
                                                          "train reads it; --sequence-parallel on|off|both also works."),
    offload: str = typer.Option("both", help="Optimizer offload to host: on, off or both."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration overlay YAML."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of the time/cost Pareto front (needs costmodel[plot])."),
    json_out: bool = JsonOpt,
    hardware_file: Optional[list[str]] = HardwareFileOpt,
):
    """Search every layout (tp, pp, interleave, dp, cp, ep, ZeRO, micro-batch, recompute, sequence
    parallelism, offload) on the hardware; print the best that fit and why the rest were rejected.

    With --infer: serving layouts, as static batches, or under --request-rate / --concurrency /
    --max-load through the serving model of `costmodel serve`."""
    from ..search import search, search_infer

    check_plot(plot)
    loads = {"request_rate": request_rate, "concurrency": concurrency, "max_load": max_load or None}
    given = [k for k, v in loads.items() if v is not None]
    if given or engine is not None or num_requests is not None:
        if not infer:
            raise InputError("--request-rate, --concurrency, --max-load, --engine and --num-requests are for "
                             "--infer", field="infer")
        if len(given) != 1:
            raise InputError("give exactly one load: --request-rate, --concurrency or --max-load (or none for "
                             "the static-batch search)", field="load")
        if batch is not None:
            raise InputError("--batch restricts the static-batch search; under a load the engine forms its batches",
                             field="batch")
        _serve_search(model, hardware, given[0], loads[given[0]], prompt_len, gen_len, engine or "vllm", num_requests,
                      max_ttft_ms, max_tpot_ms, objective or "throughput", top, tp, pp, ep, weight_dtype, kv_dtype,
                      price_per_hour, calibration, hardware_file, json_out)
        return
    if infer:
        split = lambda t: [x for x in t.replace(" ", "").split(",") if x] if t else None  # noqa: E731
        with err_console.status(Text(f"searching serving layouts of {model}...")) if not json_out else nullcontext():
            res = search_infer(model, hardware, prompt_len=prompt_len, gen_len=gen_len, max_ttft_ms=max_ttft_ms,
                               max_tpot_ms=max_tpot_ms, objective=objective or "throughput", top=top,
                               tp=_ints(tp, "tp"), batch=_ints(batch, "batch"), weight_dtype=split(weight_dtype),
                               kv_dtype=split(kv_dtype), price_per_hour=price_per_hour,
                               max_memory_fraction=max_memory_fraction, calibration=calibration,
                               hardware_files=hardware_file)
        if json_out:
            emit_json(res.to_dict())
        else:
            _render_infer(res)
        if not res.top:
            raise typer.Exit(1)
        return
    if global_batch is None:
        raise InputError("training search needs --global-batch (or pass --infer for serving layouts)", field="global-batch")
    objective = objective or "step_time"
    rc = None
    if recompute is not None:
        rc = [r for r in recompute.replace(" ", "").split(",") if r]
    kwargs = dict(global_batch=global_batch, seq_len=seq_len, objective=objective, top=top, precision=precision,
                  optimizer=optimizer, framework=framework, profile=profile, attention=attention,
                  overlap_grad_reduce=overlap_grad_reduce, tp_comm_overlap=tp_comm_overlap,
                  grad_reduce_in_bf16=grad_reduce_in_bf16, moe_enable_deepep=moe_enable_deepep, tokens=tokens, steps=steps, price_per_hour=price_per_hour,
                  max_memory_fraction=max_memory_fraction, tp=_ints(tp, "tp"), pp=_ints(pp, "pp"),
                  interleave=_ints(interleave, "interleave"), cp=_ints(cp, "cp"), ep=_ints(ep, "ep"),
                  zero_stage=_ints(zero_stage, "zero-stage", minimum=0, maximum=3), micro_batch=_ints(micro_batch, "micro-batch"),
                  recompute=rc, sequence_parallel=None if sequence_parallel is None else [sequence_parallel],
                  offload=_choice(offload, "offload"), calibration=calibration, hardware_files=hardware_file, etp=etp)
    with _layout_progress(f"{model} on {', '.join(hardware)}", enabled=not json_out) as progress:
        res = search(model, hardware, devices, progress=progress, **kwargs)
    written = None
    if plot is not None:
        from .. import plots

        written = plots.search_plot(res, plot)
    if json_out:
        emit_json(res.to_dict())
    else:
        _render(res)
    if written is not None:
        wrote_plot(written, json_out)
    if not res.top:
        raise typer.Exit(1)


def _render(res) -> None:
    rate = res.evaluated / res.seconds if res.seconds else float("nan")
    console.print(f"{res.model}: {res.enumerated:,} grid points, {res.evaluated:,} valid layouts evaluated, "
                  f"{res.feasible:,} fit; {res.seconds:.2f} s ({rate:,.0f} layouts/s). Objective: {res.objective}.")
    console.print(f"framework {res.framework}" + "".join(f" ({s})" for s in res.switches)
                  + f", {res.precision}; recompute per layout (column)")
    multi_hw = len(res.hardware) > 1
    priced = any(c.cost_per_million_tokens_usd is not None for c in res.top)
    has_run = any(c.run_days is not None for c in res.top)
    # the expected step time the layouts are ranked by, where a stall risk makes it differ
    risk = any(abs(c.expected_step_s - c.step_s) > 0.005 * c.step_s for c in res.top)
    t = Table(title=f"best layouts (global batch {res.global_batch} x {res.seq_len} tokens)")
    cols = (["#"] + (["hardware"] if multi_hw else []) + ["dev", "layout", "mb x acc", "recompute", "step"]
            + (["expected"] if risk else []) + ["TF/s", "MFU", "memory"] + (["$/Mtok"] if priced else [])
            + (["run"] if has_run else []))
    for col in cols:
        t.add_column(col, justify="left" if col in ("hardware", "layout", "recompute") else "right", no_wrap=True)
    for c in res.top:
        lay = c.layout
        layout = layout_label(lay, per_micro_batch=False)
        row = [str(c.rank)] + ([lay.hardware] if multi_hw else []) + [
            str(lay.devices), layout, f"{lay.micro_batch}x{lay.grad_accum}", lay.recompute, fmt_time(c.step_s)] + (
            [fmt_time(c.expected_step_s)] if risk else []) + [
            f"{c.tflops_per_device:.0f}", f"{c.mfu:.0%}", f"{c.required_bytes / 2**30:.0f}G {c.memory_fraction:.0%}"]
        if priced:
            row.append(f"{c.cost_per_million_tokens_usd:.2f}" if c.cost_per_million_tokens_usd is not None else "-")
        if has_run:
            run = f"{c.run_days:.1f} d" if c.run_days is not None else "-"
            if c.run_cost_usd is not None:
                run += f" ${c.run_cost_usd / 1e6:,.2f}M" if c.run_cost_usd >= 1e6 else f" ${c.run_cost_usd:,.0f}"
            row.append(run)
        t.add_row(*row)
    print_table(t)
    if res.top:
        b = Table(title="step-time breakdown of the best layouts (share of the step)")
        b.add_column("#")
        parts = [k for k in res.top[0].step_breakdown_s if any(c.step_breakdown_s.get(k, 0) > 0 for c in res.top[:3])]
        short = {"compute_s": "gemm", "attention_s": "attn", "elementwise_s": "elem", "host_overhead_s": "host",
                 "tp_comm_s": "tp", "dp_comm_exposed_s": "dp", "fsdp_comm_exposed_s": "fsdp", "pp_comm_s": "pp p2p",
                 "bubble_s": "bubble", "optimizer_s": "optim"}
        for k in parts:
            b.add_column(short.get(k, k.removesuffix("_s")), justify="right")
        for c in res.top[:3]:
            b.add_row(str(c.rank), *(f"{c.step_breakdown_s.get(k, 0.0) / c.step_s:.0%}" for k in parts))
        print_table(b)
    risky = [c for c in res.top if c.pipeline_stall and c.pipeline_stall["probability"] >= 0.05]
    if risky:  # the cluster's stall risk (steptime.pipeline_stall): a planner should see it
        console.print("pipeline stall risk on this cluster (cross-node pipeline sends): " + "; ".join(
            f"#{c.rank} {c.pipeline_stall['probability']:.0%}, +{fmt_time(c.pipeline_stall['stalled_extra_s'])}"
            f" ({'included' if c.pipeline_stall['included'] else 'not included'})" for c in risky)
            + "; layouts are ranked by their expected step time (the stall's chance times its seconds added)",
            highlight=False)
    print_table(_rejected_table(res.rejected, "grid points"))
    if not res.top:
        console.print(styled("[bold red]no layout fits[/]: add devices, relax --max-memory-fraction, allow ZeRO 3 / full "
                             "recompute / offload, or lower the micro-batch"))


def _rejected_table(rejected: dict[str, int], unit: str) -> Table:
    r = Table(title="rejected")
    r.add_column("reason")
    r.add_column(unit, justify="right")
    for k, n in sorted(rejected.items(), key=lambda kv: -kv[1]):
        r.add_row(k if k != "memory" else "does not fit in memory", f"{n:,}")
    return r


def _render_infer(res) -> None:
    console.print(f"{res.model} serving, {res.prompt_len}+{res.gen_len} tokens: {res.evaluated:,} layouts evaluated, "
                  f"{res.feasible:,} meet the targets and fit; {res.seconds:.2f} s. Objective: {res.objective}.")
    t = Table(title="best serving layouts" + (f" (TPOT <= {res.max_tpot_ms} ms)" if res.max_tpot_ms else "")
              + (f" (TTFT <= {res.max_ttft_ms} ms)" if res.max_ttft_ms else ""))
    priced = any(c.cost_per_million_tokens_usd is not None for c in res.top)
    for col in ["#", "hardware", "tp", "batch", "weights", "KV", "TTFT", "TPOT", "tok/s", "tok/s/dev", "memory"] + (["$/Mtok"] if priced else []):
        t.add_column(col, justify="left" if col in ("hardware", "weights", "KV") else "right", no_wrap=True)
    for c in res.top:
        row = [str(c.rank), c.hardware, str(c.tp), str(c.batch), c.weight_dtype, c.kv_dtype, fmt_time(c.ttft_s),
               fmt_time(c.tpot_s), f"{c.tokens_per_s:,.0f}", f"{c.tokens_per_s_per_device:,.0f}",
               f"{c.required_bytes / 2**30:.0f}G {c.memory_fraction:.0%}"]
        if priced:
            row.append(f"{c.cost_per_million_tokens_usd:.3f}" if c.cost_per_million_tokens_usd is not None else "-")
        t.add_row(*row)
    print_table(t)
    print_table(_rejected_table(res.rejected, "layouts"))
    if not res.top:
        console.print(styled("[bold red]no serving layout meets the targets[/]: relax --max-ttft-ms / --max-tpot-ms, "
                             "allow more tp or quantised weights / KV cache"))


def _serve_search(model, hardware, load, value, input_len, output_len, engine, num_requests, max_ttft_ms, max_tpot_ms,
                  objective, top, tp, pp, ep, weight_dtype, kv_dtype, price_per_hour, calibration, hardware_file,
                  json_out) -> None:
    """`search --infer` under a load: every layout through the serving model (search.search_serve)."""
    from ..search import search_serve

    split = lambda t: [x for x in t.replace(" ", "").split(",") if x] if t else None  # noqa: E731
    with _layout_progress(f"{model} serving", enabled=not json_out, unit="") as progress:
        res = search_serve(model, hardware, load=load, value=None if load == "max_load" else value,
                           input_len=input_len, output_len=output_len, engine=engine, num_requests=num_requests,
                           max_ttft_ms=max_ttft_ms, max_tpot_ms=max_tpot_ms, objective=objective, top=top,
                           tp=_ints(tp, "tp"), pp=_ints(pp, "pp"), ep=_ints(ep, "ep"), weight_dtype=split(weight_dtype),
                           kv_dtype=split(kv_dtype), price_per_hour=price_per_hour, calibration=calibration,
                           hardware_files=hardware_file, progress=progress)
    if json_out:
        emit_json(res.to_dict())
    else:
        _render_serve(res)
    if not res.top:
        raise typer.Exit(1)


def _render_serve(res) -> None:
    what = "max load" if res.load == "max_load" else f"{res.load.replace('_', ' ')} {res.load_value:g}"
    console.print(f"{res.model} on {res.engine}, {what}, {res.num_requests} x {res.input_len}+{res.output_len} tokens: "
                  f"{res.evaluated:,} layouts served, {res.feasible:,} meet the targets; {res.seconds:.1f} s. "
                  f"Objective: {res.objective}.", highlight=False)
    lim = "".join(f" ({n} p99 <= {v:g} ms)" for n, v in (("TTFT", res.max_ttft_ms), ("TPOT", res.max_tpot_ms)) if v)
    t = Table(title="best serving layouts under the load" + lim)
    priced = any(c.usd_per_million_output_tokens is not None for c in res.top)
    multi_hw = len(res.hardware) > 1
    cols = (["#"] + (["hardware"] if multi_hw else []) + ["layout", "w/KV", "TTFT p99", "TPOT p99",
            "tok/s/dev"] + (["$/Mtok"] if priced else []))
    for col in cols:
        t.add_column(col, justify="left" if col in ("hardware", "layout", "w/KV") else "right", no_wrap=True)
    for c in res.top:
        row = [str(c.rank)] + ([c.hardware] if multi_hw else []) + [
            c.layout, f"{c.weight_dtype}/{c.kv_dtype}", f"{c.ttft_p99_s * 1e3:,.0f} ms",
            f"{c.tpot_p99_s * 1e3:,.1f} ms" if c.tpot_p99_s is not None else "-", f"{c.output_tokens_per_s_per_device:,.0f}"]
        if priced:
            row.append(f"{c.usd_per_million_output_tokens:.3f}" if c.usd_per_million_output_tokens is not None else "-")
        t.add_row(*row)
    if res.top:
        print_table(t, keep=2 if multi_hw else 1)
    if res.rejected:
        print_table(_rejected_table(res.rejected, "layouts"))
    if not res.top:
        console.print(styled("[bold red]no serving layout meets the targets under the load[/]: relax --max-ttft-ms / "
                             "--max-tpot-ms, lower the load, or allow more tp or quantised weights / KV cache"))


class _LayoutProgress:
    """A progress bar on stderr while a search screens its layouts: done / total, layouts per
    second, elapsed (a terminal only: nothing is drawn in a pipe or with --json)."""

    def __init__(self, what: str, enabled: bool, unit: str = "M"):
        self.what, self.enabled, self.unit = what, enabled and err_console.is_terminal, unit
        self.bar = self.task = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}", markup=False), TimeElapsedColumn(), console=err_console,
                            transient=True)
        self.bar.__enter__()
        self.task = self.bar.add_task(f"layouts of {self.what}", total=None, rate="")
        return self

    def __call__(self, done: int, total: int) -> None:
        elapsed = self.bar.tasks[0].elapsed or 0.0
        scale = 1e6 if self.unit == "M" else 1.0
        rate = f"{done / elapsed / scale:.2f}{self.unit} layouts/s" if elapsed > 0 else ""
        self.bar.update(self.task, completed=done, total=total, rate=rate)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def _layout_progress(what: str, enabled: bool, unit: str = "M") -> _LayoutProgress:
    return _LayoutProgress(what, enabled, unit)


def register(app: typer.Typer) -> None:
    app.command("search")(search_cmd)
