"""`costmodel scale`: compute-optimal planning from scaling laws, with time, energy and cost.

    costmodel scale --budget-usd 1e6 --hardware h100-sxm [--devices 1024] [--law besiroglu|all]
    costmodel scale --model llama2-7b --tokens 2e12 --hardware h100-sxm
    costmodel scale --list-laws
"""
from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .. import scaling as sc
from .. import energy
from ..errors import InputError
from ..units import fmt_si, fmt_time
from .common import HardwareFileOpt, JsonOpt, console, emit_json, library, print_table, styled, check_plot, wrote_plot

DEFAULT_LAW = "besiroglu"
DEFAULT_DEVICES = 1024


def _fmt_count(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def _fmt_usd(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"${x / 1e6:,.2f}M"
    if x >= 1e3:
        return f"${x / 1e3:,.1f}K"
    return f"${x:,.4g}"


def _fmt_kwh(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1e3:
        return f"{x / 1e3:,.1f} MWh"
    return f"{x:,.1f} kWh"


def _budget(usd, flops, device_hours, days) -> sc.Budget | None:
    given = [(k, v) for k, v in (("usd", usd), ("flops", flops), ("device_hours", device_hours), ("days", days)) if v is not None]
    if len(given) > 1:
        raise InputError("give one budget: --budget-usd, --budget-flops, --budget-device-hours or --budget-days",
                         field="budget")
    return sc.Budget(*given[0]) if given else None


def _bits(dtype: str, bits: Optional[float], w: Optional[float], a: Optional[float], kv: Optional[float]):
    base = bits if bits is not None else float(sc.DTYPE_BITS.get(dtype, 16))
    out = tuple(x if x is not None else base for x in (w, a, kv))
    for name, v in zip(("weight", "activation", "kv"), out):
        if not v > 0:
            raise InputError(f"{name} bits must be positive, got {v}", field="bits")
    return out


def _plot(path: str, laws_to_plot, laws, plans, hw, budget_flops: float, cond: sc.Conditions):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib, an optional extra: pip install 'costmodel[plot]'",
                         field="plot") from None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    factors = (0.01, 0.1, 1.0, 10.0, 100.0)
    law = laws_to_plot[0]
    for f in factors:
        c = budget_flops * f
        ns, ls = sc.iso_flop_curve(law, laws, c, cond=cond)
        label = f"{c:.2g} FLOPs"
        if hw is not None and hw.price_per_device_hour is not None:
            usd = c / hw.throughput.flops_per_device / 3600.0 * hw.price_per_device_hour
            label += f" (${usd:,.0f})"
        line, = ax.plot(ns, ls, label=label)
        opt = sc.compute_optimal(law, laws, c, sc.Conditions(cond.unique_tokens, 0.0, 1.0, cond.bits_w, cond.bits_a,
                                                              cond.bits_kv))
        ax.plot([opt.params], [opt.loss], "o", color=line.get_color())
    for p in plans:
        if p.law_id == law.id:  # the plan (or the given model) on its own law's curves
            ax.plot([p.allocation.params], [p.allocation.loss], "k*", markersize=10)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    surface = law.loss_law_id or law.id
    ax.set_ylabel(f"predicted loss ({surface}{' surface' if surface != law.id else ''})")
    ax.set_title(f"Iso-FLOP{' / iso-cost' if hw is not None and hw.price_per_device_hour else ''} curves, {law.name}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    from ..plots import _save

    _save(fig, plt, path, dpi=120, bbox_inches=None)


def scale_cmd(
    budget_usd: Optional[float] = typer.Option(None, "--budget-usd", help="Budget in US dollars (needs a price)."),
    budget_flops: Optional[float] = typer.Option(None, "--budget-flops", help="Budget in training FLOPs."),
    budget_device_hours: Optional[float] = typer.Option(None, "--budget-device-hours", help="Budget in device-hours."),
    budget_days: Optional[float] = typer.Option(None, "--budget-days", help="Budget in days on --devices devices."),
    hardware: Optional[str] = typer.Option(None, "--hardware", help="Accelerator or node id (a node resolves to its device)."),
    devices: Optional[int] = typer.Option(None, "--devices", help=f"Cluster size in devices (default {DEFAULT_DEVICES})."),
    law: str = typer.Option(DEFAULT_LAW, "--law", help="Law id, or 'all' to compare every law (see --list-laws)."),
    law_file: Optional[list[str]] = typer.Option(None, "--law-file", help="YAML file(s) of extra or replacement laws."),
    model: Optional[str] = typer.Option(None, "--model", help="Reverse mode: a preset id or config file."),
    params: Optional[float] = typer.Option(None, "--params", help="Reverse mode: parameter count in the law's convention."),
    tokens: Optional[float] = typer.Option(None, "--tokens", help="Reverse mode: training tokens."),
    arch_flops: bool = typer.Option(False, "--arch-flops", help="With --model: FLOPs per token from the architecture instead of 6N."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Sequence length for --arch-flops (default: the model's context)."),
    dtype: str = typer.Option("bf16", "--dtype", help="Training/serving dtype for peak FLOP/s and precision laws."),
    mfu: Optional[float] = typer.Option(None, "--mfu", help="Training MFU (default: costmodel.training estimate or 0.40)."),
    price_per_hour: Optional[float] = typer.Option(None, "--price-per-hour", help="USD per device-hour (overrides the spec)."),
    pue: float = typer.Option(sc.DEFAULT_PUE, "--pue", help="Facility PUE (default 1.58: Uptime Institute 2023 industry average; costmodel/energy.py)."),
    power_fraction: float = typer.Option(sc.DEFAULT_POWER_FRACTION, "--power-fraction", help="Average board power / TDP (default 1.0: TDP, as published carbon accounts count it)."),
    served_tokens: float = typer.Option(0.0, "--served-tokens", help="Lifetime served tokens (inference-aware laws)."),
    unique_tokens: Optional[float] = typer.Option(None, "--unique-tokens", help="Unique tokens available (data-constrained laws)."),
    bits: Optional[float] = typer.Option(None, "--bits", help="Training precision in bits for weights/activations/KV (default: from --dtype)."),
    weight_bits: Optional[float] = typer.Option(None, "--weight-bits"),
    act_bits: Optional[float] = typer.Option(None, "--act-bits"),
    kv_bits: Optional[float] = typer.Option(None, "--kv-bits"),
    serving_batch: int = typer.Option(sc.DEFAULT_SERVING_BATCH, "--serving-batch", help="Decode batch for the serving roofline."),
    serving_mfu: Optional[float] = typer.Option(None, "--serving-mfu", help="Serving utilisation (overrides the roofline)."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write iso-FLOP / iso-cost curves to this PNG (needs matplotlib)."),
    list_laws: bool = typer.Option(False, "--list-laws", help="List the laws and their sources, then exit."),
    json_out: bool = JsonOpt,
    hardware_file: Optional[list[str]] = HardwareFileOpt,
):
    """Compute-optimal model size, tokens and loss for a budget, with time, energy and cost."""
    from ..errors import require_run

    check_plot(plot)
    require_run(tokens, None, price_per_hour)
    laws = sc.load_laws(law_file or [])
    if list_laws:
        rows = [{"id": l.id, "name": l.name, "form": l.form, "param_convention": l.param_convention,
                 "source": l.source, "notes": l.notes} for l in laws.values()]
        if json_out:
            emit_json(rows)
            return
        t = Table(title="Scaling laws", show_lines=True)
        for c in ("id", "form", "source"):
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(r["id"], r["form"], r["source"])
        print_table(t)
        return

    chosen = list(laws.values()) if law == "all" else [sc.get_law(laws, law)]
    budget = _budget(budget_usd, budget_flops, budget_device_hours, budget_days)
    reverse = model is not None or params is not None
    if model is not None and params is not None:
        raise InputError("give --model or --params, not both", field="params")
    if reverse and tokens is None and budget is None:
        raise InputError("reverse mode needs --tokens or a budget", field="tokens")
    if not reverse and budget is None:
        raise InputError("give a budget (--budget-usd, --budget-flops, --budget-device-hours, --budget-days) "
                         "or a model (--model / --params with --tokens)", field="budget")
    if tokens is not None and not reverse:
        raise InputError("--tokens needs --model or --params", field="tokens")
    if arch_flops and model is None:
        raise InputError("--arch-flops needs --model", field="arch_flops")
    if served_tokens < 0:
        raise InputError("served tokens cannot be negative", field="served_tokens")
    if unique_tokens is not None and not unique_tokens > 0:
        raise InputError("unique tokens must be positive", field="unique_tokens")

    mcfg = None
    if model is not None:
        from ..arch import load_model

        mcfg = load_model(model)

    hw = None
    if hardware is not None:
        lib = library(hardware_file)
        spec = lib.device(hardware)
        node = lib.node_for(hardware)
        n_dev = devices if devices is not None else DEFAULT_DEVICES
        hw = sc.make_hardware(spec, n_dev, model=mcfg, dtype=dtype, mfu=mfu, price_per_hour=price_per_hour, pue=pue,
                              power_fraction=power_fraction, serving_batch=serving_batch, serving_mfu=serving_mfu)
        if node is not None and n_dev % node.devices_per_node and not json_out:
            console.print(styled(f"[yellow]note:[/] {n_dev} devices is not a whole number of {node.id} nodes "
                                 f"({node.devices_per_node} per node)"), highlight=False)
    elif budget is not None and budget.kind != "flops":
        raise InputError(f"a {budget.kind.replace('_', '-')} budget needs --hardware", field="hardware")

    bw, ba, bkv = _bits(dtype, bits, weight_bits, act_bits, kv_bits)
    cond = sc.Conditions(unique_tokens=unique_tokens, served_tokens=served_tokens, bits_w=bw, bits_a=ba, bits_kv=bkv)

    plans: list[sc.Plan] = []
    for lw in chosen:
        if reverse:
            n = sc.law_param_count(lw, mcfg) if mcfg is not None else float(params)
            fpt = sc.training_flops_per_token(mcfg, seq_len) if arch_flops else None
            p = sc.plan_for_model(lw, laws, n, tokens=tokens, budget=budget, hw=hw, flops_per_token=fpt, cond=cond)
            if mcfg is not None:
                p.notes.append(f"{mcfg.id}: {n:,.0f} parameters in the law's '{lw.param_convention}' convention")
            if lw.form == "vocabulary" and mcfg is not None:
                v = sc.tao_optimal_vocab(lw, float(mcfg.non_embedding_params), mcfg.hidden)
                p.allocation.extras.update(recommended_vocab_size=v["vocab_size"], model_vocab_size=mcfg.vocab)
        else:
            p = sc.plan_from_budget(lw, laws, budget, hw, cond)
        plans.append(p)

    if plot:
        ref = plans[0].budget_flops or plans[0].allocation.train_flops
        _plot(plot, chosen, laws, plans, hw, ref, cond)
        wrote_plot(plot, json_out)

    inputs = {
        "mode": "model" if reverse else "budget",
        "budget": {"kind": budget.kind, "value": budget.value} if budget else None,
        "model": mcfg.id if mcfg else None,
        "params": params,
        "tokens": tokens,
        "law": law,
        "served_tokens": served_tokens,
        "unique_tokens": unique_tokens,
        "bits": {"weights": bw, "activations": ba, "kv_cache": bkv},
        "plot": plot,
    }
    if json_out:
        emit_json({"inputs": inputs, "plans": [p.to_dict() for p in plans]})
        return
    _print(plans, hw, budget, reverse)


def _print(plans: list[sc.Plan], hw: sc.Hardware | None, budget: sc.Budget | None, reverse: bool):
    if hw is not None:
        th = hw.throughput
        console.print(styled(f"[bold]{escape(hw.spec.id)}[/] x {hw.devices}: {fmt_si(th.peak_flops, 'FLOP/s')} {th.dtype} peak, "
                      f"MFU {th.mfu:.0%} ({escape(th.source)}) -> {fmt_si(hw.cluster_flops, 'FLOP/s')} sustained"), highlight=False)
        price = f"${hw.price_per_device_hour:.2f}/device-hour ({hw.price_source})" if hw.price_per_device_hour else hw.price_source
        console.print(f"price {price}; {energy.describe(hw.spec.tdp_w, hw.pue, hw.power_fraction)}; "
                      f"serving utilisation {hw.serving_util:.1%} ({hw.serving_util_source})", highlight=False)
    if budget is not None and plans and plans[0].budget_flops:
        console.print(f"budget {budget.value:g} {budget.kind.replace('_', '-')} = {plans[0].budget_flops:.3g} training FLOPs",
                      highlight=False)
    if len(plans) == 1:
        p = plans[0]
        d = p.to_dict()
        t = Table(title=f"{'Prediction' if reverse else 'Compute-optimal plan'}: {p.law_name}", show_header=False)
        t.add_column("quantity")
        t.add_column("value", overflow="fold")
        t.add_row("parameters", f"{_fmt_count(d['params'])} ({d['params']:.4g})")
        t.add_row("training tokens", f"{_fmt_count(d['tokens'])} ({d['tokens_per_param']:.1f} per parameter)")
        t.add_row("training compute", f"{d['train_flops']:.4g} FLOPs")
        t.add_row("predicted loss", f"{d['predicted_loss']:.4f} nats/token (in the law's own data and tokenizer)")
        for k, v in d["extras"].items():
            if isinstance(v, float):
                t.add_row(k.replace("_", " "), f"{v:.4g}")
            else:
                t.add_row(k.replace("_", " "), str(v))
        if hw is not None:
            t.add_row("wall-clock time", f"{fmt_time(d['train_time_s'])} on {hw.devices} x {hw.spec.id}")
            t.add_row("device-hours", f"{d['device_hours']:,.0f}")
            t.add_row("energy", _fmt_kwh(d["energy_kwh"]))
            t.add_row("training cost", _fmt_usd(d["cost_usd"]))
            if d.get("serving_cost_usd") is not None:
                t.add_row("serving cost (in budget)", _fmt_usd(d["serving_cost_usd"]))
            t.add_row("cost per 1M served tokens", _fmt_usd(d["cost_per_million_served_tokens_usd"]))
        t.add_row("source", p.source)
        for n in d["notes"]:
            t.add_row("note", n)
        print_table(t)
        return
    ds = [p.to_dict() for p in plans]
    run_cols = ("train_time_s", "device_hours", "energy_kwh", "cost_usd")
    same_run = hw is not None and all(
        all(abs((d[k] or 0) - (ds[0][k] or 0)) <= 1e-9 * abs(ds[0][k] or 1) for k in run_cols) for d in ds)
    t = Table(title="Scaling laws compared" + ("" if reverse else " (compute-optimal for the same budget)"))
    cols = ["law", "params", "tokens", "tok/N", "loss"]
    if hw is not None and not same_run:
        cols += ["time", "cost"]  # device-hours and energy: see --json
    cols += ["$/1M srv"]
    for c in cols:
        t.add_column(c, justify="left" if c == "law" else "right", no_wrap=True)
    for p, d in zip(plans, ds):
        tpp = d["tokens_per_param"]
        row = [p.law_id, _fmt_count(d["params"]), _fmt_count(d["tokens"]), f"{tpp:.0f}" if tpp >= 100 else f"{tpp:.1f}",
               f"{d['predicted_loss']:.3f}"]
        if hw is not None and not same_run:
            row += [fmt_time(d["train_time_s"]), _fmt_usd(d.get("cost_usd"))]
        row.append(_fmt_usd(d.get("cost_per_million_served_tokens_usd")))
        t.add_row(*row)
    print_table(t)
    if same_run:
        d = ds[0]
        console.print(f"every plan trains for {fmt_time(d['train_time_s'])} on {hw.devices} x {hw.spec.id}: "
                      f"{d['device_hours']:,.0f} device-hours, {_fmt_kwh(d['energy_kwh'])}, cost {_fmt_usd(d['cost_usd'])}",
                      highlight=False)
    console.print("losses are in each law's own units (dataset, tokenizer) and are not comparable across laws; "
                  "see --list-laws for sources", highlight=False)
    for p in plans:
        for n in p.to_dict()["notes"]:
            console.print(Text(f"{p.law_id}: {n}", style="dim"), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("scale")(scale_cmd)
