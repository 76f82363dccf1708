"""`costmodel infer`: inference memory, TTFT, TPOT and throughput versus batch."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..plan import infer, largest_batch_under_tpot
from ..units import fmt_bytes, fmt_time
from .common import HardwareFileOpt, JsonOpt, console, emit_json, print_table, styled, check_plot, wrote_plot


def infer_cmd(
    model: str = typer.Argument(..., help="Model preset id, preset YAML or HF config.json."),
    hardware: str = typer.Option("h100-sxm", "--hardware", "-H"),
    tp: int = typer.Option(1, help="Tensor-parallel size."),
    batch: int = typer.Option(1, help="Concurrent sequences."),
    prompt_len: int = typer.Option(1024, "--prompt-len"),
    gen_len: int = typer.Option(128, "--gen-len"),
    weight_dtype: str = typer.Option("bf16", help="fp32, bf16, fp16, fp8, int8, int4 (weight-only quantisation)."),
    kv_dtype: str = typer.Option("bf16", help="KV-cache dtype."),
    cuda_graph: bool = typer.Option(True, "--cuda-graph/--eager"),
    host_time_factor: float = typer.Option(1.0, "--host-time-factor", min=0.01,
                                           help="--eager: host (Python) time relative to the H100 machine the eager constants were fitted on; multiplies the device calibration's own factor (0.6 in the shipped H200 one)."),
    max_tpot_ms: Optional[float] = typer.Option(None, help="Also find the largest batch (up to the memory limit) whose TPOT meets this target."),
    calibration: Optional[str] = typer.Option(None, "--calibration"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: throughput and per-token latency vs batch, memory limit marked (needs costmodel[plot])."),
    json_out: bool = JsonOpt,
    hardware_file: Optional[list[str]] = HardwareFileOpt,
):
    """Weights + KV cache per device, prefill (TTFT) and decode (TPOT) time, throughput vs batch;
    says when it does not fit (a result: exit 0; `costmodel check` fails on limits)."""
    from ..errors import InputError

    check_plot(plot)
    for name, val in (("weight-dtype", weight_dtype), ("kv-dtype", kv_dtype)):
        if val not in ("fp32", "bf16", "fp16", "fp8", "int8", "int4"):
            raise InputError(f"{val!r} is not one of fp32, bf16, fp16, fp8, int8, int4", field=name)
    est = infer(model, hardware, tp=tp, batch=batch, prompt_len=prompt_len, gen_len=gen_len, weight_dtype=weight_dtype,
                kv_dtype=kv_dtype, cuda_graph=cuda_graph, calibration=calibration, hardware_files=hardware_file,
                host_time_factor=host_time_factor)
    out = est.to_dict()
    if max_tpot_ms is not None:
        out["best_under_tpot"] = largest_batch_under_tpot(
            model, hardware, tp=tp, prompt_len=prompt_len, gen_len=gen_len, weight_dtype=weight_dtype, kv_dtype=kv_dtype,
            cuda_graph=cuda_graph, calibration=calibration, hardware_files=hardware_file,
            host_time_factor=host_time_factor, max_tpot_s=max_tpot_ms / 1e3)
    written = None
    if plot is not None:
        from ..plots import infer_plot

        written = infer_plot(est, plot)
    if json_out:
        emit_json(out)
    else:
        t = Table(title=f"{est.model_id} inference on {est.tp} x {est.hardware}, batch {batch}, {prompt_len}+{gen_len} tokens")
        t.add_column("item")
        t.add_column("value", justify="right")
        m = est.memory
        for k, v in (("weights", m.weights_bytes), ("KV cache", m.kv_cache_bytes), ("workspace", m.workspace_bytes),
                     ("peak allocated", m.peak_bytes), ("needed incl. context", est.required_bytes), ("capacity", est.capacity_bytes)):
            t.add_row(k, fmt_bytes(v))
        t.add_row("TTFT (prefill)", fmt_time(est.ttft_s))
        t.add_row("TPOT (decode step)", fmt_time(est.tpot_s))
        t.add_row("decode bound by", est.decode_bound)
        if not cuda_graph:
            mach = est.eager_host_factor / host_time_factor if host_time_factor else 1.0
            why = f"x{host_time_factor:g} (--host-time-factor)" + (f" x {mach:g} (this machine's calibration)" if abs(mach - 1) > 1e-9 else "")
            t.add_row("eager host time", f"x{est.eager_host_factor:g} of the fitted H100 host: {why}")
        t.add_row("tokens/s, decode only (batch / TPOT)", f"{est.tokens_per_s:,.0f}")
        t.add_row("tokens/s end to end (prefill included)", f"{est.e2e_tokens_per_s:,.0f}")
        t.add_row("max batch that fits", str(est.max_batch_that_fits))
        t.add_row("efficiency", est.efficiency_source)
        print_table(t)
        c = Table(title="throughput vs batch (output tokens/s)")
        for col in ("batch", "TPOT", "decode only", "end to end"):
            c.add_column(col, justify="right")
        for p in est.throughput_curve:
            c.add_row(str(p["batch"]), fmt_time(p["tpot_s"]), f"{p['tokens_per_s']:,.0f}", f"{p['e2e_tokens_per_s']:,.0f}")
        print_table(c)
        if "best_under_tpot" in out:
            b = out["best_under_tpot"]
            console.print(f"largest batch under {max_tpot_ms:g} ms/token: " + (
                f"{b['batch']} (TPOT {fmt_time(b['tpot_s'])}; {b['tokens_per_s']:,.0f} tokens/s decode only, "
                f"{b['e2e_tokens_per_s']:,.0f} end to end with a {fmt_time(b['ttft_s'])} prefill)" if b
                else "none (batch 1 misses it or does not fit)"), highlight=False)
        for note in est.notes:
            console.print(f"note: {note}", highlight=False)
        console.print(styled("[green]fits[/]" if est.fits else f"[bold red]does not fit[/]: needs {fmt_bytes(est.required_bytes)}; "
                             "try --tp, --weight-dtype int8/fp8, --kv-dtype fp8 or a smaller batch/context"))
    if written is not None:
        wrote_plot(written, json_out)


def register(app: typer.Typer) -> None:
    app.command("infer")(infer_cmd)
