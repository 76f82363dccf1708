"""`costmodel roofline`: the operators of one decoder layer (and the LM head) on a device's roofline."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..arch import load_model
from ..errors import require_positive
from ..flops import attention_core_flops, layer_gemms
from ..roofline import attention_op, efficiency_for, gemm_op, memory_op
from ..units import fmt_time
from .common import HardwareFileOpt, JsonOpt, emit_json, library, print_table, check_plot, wrote_plot


def roofline_cmd(
    model: str = typer.Argument(...),
    hardware: str = typer.Option("h100-sxm", "--hardware", "-H"),
    micro_batch: int = typer.Option(1, "--micro-batch"),
    seq_len: int = typer.Option(2048, "--seq-len"),
    dtype: str = typer.Option("bf16"),
    calibration: Optional[str] = typer.Option(None, "--calibration"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: the operators on the device roofline, log-log (needs costmodel[plot])."),
    json_out: bool = JsonOpt,
    hardware_file: Optional[list[str]] = HardwareFileOpt,
):
    """Forward operators of one layer: FLOPs, bytes, arithmetic intensity, bound and time."""
    require_positive(micro_batch=micro_batch, seq_len=seq_len)
    check_plot(plot)
    m = load_model(model)
    spec = library(hardware_file).device(hardware)
    eff = efficiency_for(spec, calibration)
    tokens = micro_batch * seq_len
    ops = [gemm_op(eff, g.name, g.m, g.k, g.n, dtype, g.count) for g in layer_gemms(m, tokens, m.moe is not None)]
    core = attention_core_flops(m, micro_batch, seq_len, causal=True)
    ops.append(attention_op(eff, "attention_core", micro_batch, m.heads, seq_len, m.d_head, core, False))
    ops.append(memory_op(eff, "norms+residual+activation", tokens * (40.0 * m.hidden + 6.0 * m.ffn)))
    ops.append(gemm_op(eff, "lm_head", tokens, m.hidden, m.vocab, dtype))
    ridge = spec.peak(dtype) / spec.memory.bandwidth_bytes_per_s
    rows = [{"op": o.name, "kind": o.kind, "flops": o.flops, "bytes": o.bytes, "intensity": o.intensity,
             "bound": o.bound, "time_s": o.time_s} for o in ops]
    if plot is not None:
        from ..plots import roofline_plot

        wrote_plot(roofline_plot(rows, spec.peak(dtype), spec.memory.bandwidth_bytes_per_s, plot,
                                 title=f"{m.id} layer on {spec.id} ({dtype}, {tokens} tokens)"), json_out)
    if json_out:
        emit_json({"model": m.id, "hardware": spec.id, "ridge_flops_per_byte": ridge, "efficiency": eff.source, "ops": rows})
        return
    t = Table(title=f"{m.id} layer on {spec.id} (ridge point {ridge:.0f} FLOP/byte; {eff.source})")
    for c in ("op", "GFLOP", "MB", "FLOP/byte", "bound", "time"):
        t.add_column(c, justify="left" if c in ("op", "bound") else "right")
    for r in rows:
        t.add_row(r["op"], f"{r['flops'] / 1e9:,.1f}", f"{r['bytes'] / 1e6:,.1f}", f"{r['intensity']:,.0f}", r["bound"], fmt_time(r["time_s"]))
    print_table(t)


def register(app: typer.Typer) -> None:
    app.command("roofline")(roofline_cmd)
