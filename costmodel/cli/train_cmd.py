"""`costmodel train`: memory and step-time breakdown of one training layout."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .. import energy
from ..plan import fix_suggestions, train
from ..units import fmt_bytes, fmt_time
from ..workload import TrainJob
from .common import HardwareFileOpt, JsonOpt, console, emit_json, print_table, styled, check_plot, wrote_plot


def train_cmd(
    model: str = typer.Argument(..., help="Model preset id, preset YAML or HF config.json."),
    hardware: str = typer.Option("h100-sxm", "--hardware", "-H", help="Device or node spec id."),
    devices: Optional[int] = typer.Option(None, help="Total devices (default: nodes x devices per node, or tp*pp*dp)."),
    nodes: Optional[int] = typer.Option(None, help="Number of nodes of a node spec."),
    tp: int = typer.Option(1, "--tp", "--tensor-model-parallel-size", help="Tensor-parallel size."),
    pp: int = typer.Option(1, "--pp", "--pipeline-model-parallel-size", help="Pipeline-parallel size."),
    dp: Optional[int] = typer.Option(None, help="Data-parallel size (default: the rest)."),
    cp: int = typer.Option(1, "--cp", "--context-parallel-size", help="Context-parallel size."),
    ep: int = typer.Option(1, "--ep", "--expert-model-parallel-size", help="Expert-parallel size."),
    etp: Optional[int] = typer.Option(None, "--etp", "--expert-tensor-parallel-size",
                                      help="Tensor-parallel ranks that split each expert (default: tp; 1 folds tp into ep)."),
    sequence_parallel: bool = typer.Option(False, "--sequence-parallel/--no-sequence-parallel",
                                           help="Sequence parallelism with tp (Korthikanti et al. 2022); "
                                                "--sequence-parallel on|off also works, as in search."),
    zero_stage: int = typer.Option(0, min=0, max=3, help="ZeRO stage (3 = FSDP)."),
    interleave: int = typer.Option(1, help="Virtual pipeline stages per device."),
    micro_batch: int = typer.Option(1, "--micro-batch", "--micro-batch-size", help="Sequences per device per forward/backward."),
    global_batch: Optional[int] = typer.Option(None, "--global-batch", "--global-batch-size", help="Sequences per optimizer step."),
    seq_len: int = typer.Option(2048, "--seq-len", "--seq-length", help="Tokens per sequence."),
    precision: str = typer.Option("amp-bf16", help="fp32, amp-bf16, amp-fp16, bf16, fp8."),
    optimizer: str = typer.Option("adamw", help="adamw, adamw-bf16, adamw-8bit, sgd, adafactor, lion."),
    recompute: str = typer.Option("none", help="none, selective, full."),
    attention: str = typer.Option("flash", help="flash or standard."),
    framework: Optional[str] = typer.Option(None, help="Framework: megatron (default), pytorch, deepspeed, torchtitan, nanotron (any case; data/frameworks/)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Framework profile YAML (from fit-profile) that times the step."),
    overlap_grad_reduce: bool = typer.Option(True, "--overlap-grad-reduce/--no-overlap-grad-reduce",
                                             help="Overlap the data-parallel gradient reduction with backward (DDP buckets)."),
    tp_comm_overlap: bool = typer.Option(False, "--tp-comm-overlap",
                                         help="Megatron-LM's TP communication overlapped with the GEMMs, chunk by chunk (needs --sequence-parallel)."),
    grad_reduce_in_bf16: bool = typer.Option(False, "--grad-reduce-in-bf16",
                                             help="Megatron-LM's gradient buffers and data-parallel reduction in bf16 (else fp32)."),
    moe_enable_deepep: bool = typer.Option(False, "--moe-enable-deepep",
                                           help="MoE all-to-alls through DeepEP: one copy of a token per node across the network."),
    offload_optimizer: str = typer.Option("none", help="none, cpu, nvme."),
    offload_params: str = typer.Option("none", help="none, cpu, nvme."),
    host_time_factor: float = typer.Option(1.0, "--host-time-factor", min=0.01,
                                           help="Eager PyTorch host (Python) time relative to the H100 machines the host constants were fitted on."),
    steps: Optional[int] = typer.Option(None, help="Steps of the whole run (for days, energy and cost)."),
    tokens: Optional[float] = typer.Option(None, help="Tokens of the whole run (alternative to --steps)."),
    price_per_hour: Optional[float] = typer.Option(None, "--price-per-hour", help="USD per device-hour (default: spec)."),
    pue: float = typer.Option(energy.DEFAULT_PUE, "--pue", help="Facility PUE for the run's energy (default 1.58: Uptime Institute 2023 industry average; costmodel/energy.py)."),
    power_fraction: float = typer.Option(energy.DEFAULT_POWER_FRACTION, "--power-fraction", help="Average board power / TDP for the run's energy (default 1.0: TDP, as published carbon accounts count it)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration overlay YAML."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: memory per device vs capacity and the step-time breakdown (needs costmodel[plot])."),
    json_out: bool = JsonOpt,
    hardware_file: Optional[list[str]] = HardwareFileOpt,
):
    """Memory per device and step time for a model on a layout; says when it does not fit (a
    result: exit 0; `costmodel check` fails on limits)."""
    from ..errors import InputError
    from ..specs import load_library

    from ..errors import require_run

    check_plot(plot)
    require_run(tokens, steps, price_per_hour)
    energy.check_energy_inputs(pue, power_fraction)
    for name, val, allowed in (("precision", precision, ("fp32", "amp-bf16", "amp-fp16", "bf16", "fp8")),
                               ("recompute", recompute, ("none", "selective", "full")),
                               ("attention", attention, ("flash", "standard")),
                               ("optimizer", optimizer, ("adamw", "adamw-bf16", "adamw-8bit", "sgd", "adafactor", "lion")),
                               ("offload-optimizer", offload_optimizer, ("none", "cpu", "nvme")),
                               ("offload-params", offload_params, ("none", "cpu", "nvme"))):
        if val not in allowed:
            raise InputError(f"{val!r} is not one of {', '.join(allowed)}", field=name)
    est = train(model, hardware, devices=devices, nodes=nodes, tp=tp, pp=pp, dp=dp, cp=cp, ep=ep,
                sequence_parallel=sequence_parallel, zero_stage=zero_stage, interleave=interleave,
                micro_batch=micro_batch, seq_len=seq_len, global_batch=global_batch, precision=precision,
                optimizer=optimizer, recompute=recompute, attention=attention, framework=framework,
                overlap_grad_reduce=overlap_grad_reduce, tp_comm_overlap=tp_comm_overlap, offload_optimizer=offload_optimizer, offload_params=offload_params, calibration=calibration,
                host_time_factor=host_time_factor, profile=profile, grad_reduce_in_bf16=grad_reduce_in_bf16,
                moe_enable_deepep=moe_enable_deepep,
                etp=etp, hardware_files=hardware_file)
    spec = load_library(hardware_file).device(hardware)
    price = price_per_hour if price_per_hour is not None else spec.price_per_hour_usd
    run = None
    n_steps = steps if steps is not None else (int(tokens // est.tokens_per_step) if tokens else None)
    if n_steps:
        secs = n_steps * est.step.total_s
        dev_h = secs / 3600 * est.devices
        run = {"steps": n_steps, "seconds": secs, "days": secs / 86400, "device_hours": dev_h,
               "energy_kwh": energy.energy_kwh(spec.tdp_w, est.devices, secs, pue, power_fraction),
               "tdp_w": spec.tdp_w, "power_fraction": power_fraction, "pue": pue,
               "energy_model": energy.describe(spec.tdp_w, pue, power_fraction),
               "cost_usd": dev_h * price if price else None, "price_per_hour_usd": price}
    out = est.to_dict()
    out["run"] = run
    out["fix_suggestions"] = [] if est.fits else fix_suggestions(est)
    written = None
    if plot is not None:
        from ..plots import train_plot

        written = train_plot(est, plot)
    if json_out:
        emit_json(out)
    else:
        _render(est, run)
    if written is not None:
        wrote_plot(written, json_out)


def _render(est, run):
    mem = est.memory
    on_cpu = str(est.hardware).startswith("cpu-")  # a CPU spec as the device: no CUDA runtime
    t = Table(title=f"{est.model_id} on {est.devices} x {est.hardware}\n{header(est)}")
    t.add_column("memory per device")
    t.add_column("bytes", justify="right")
    rows = [("weights", mem.weights_bytes), ("gradients (peak)", mem.grads_bytes), ("optimizer states", mem.optimizer_bytes),
            ("master weights", mem.master_bytes), ("gradient buffers", mem.grad_buffers_bytes),
            ("weight copies (autocast / gathered)", mem.weight_copies_bytes), ("activations at peak", mem.activations_bytes),
            ("logits / loss buffers", mem.logits_bytes), ("runtime (BLAS workspaces)" if on_cpu else "runtime (cuBLAS workspaces)", mem.runtime_bytes)]
    for k, v in rows:
        if v:
            t.add_row(k, fmt_bytes(v))
    t.add_row("steady (between steps)", fmt_bytes(mem.steady_bytes))
    t.add_row(styled(f"[bold]peak allocated[/] ({escape(mem.peak_phase)})"), styled(f"[bold]{fmt_bytes(mem.peak_bytes)}[/]"))
    t.add_row("needed incl. runtime + fragmentation" if on_cpu else "needed incl. CUDA context + fragmentation",
              fmt_bytes(est.required_bytes))
    t.add_row("device capacity", fmt_bytes(est.capacity_bytes))
    if mem.offloaded_cpu_bytes:
        t.add_row("offloaded to host DRAM", fmt_bytes(mem.offloaded_cpu_bytes))
    if mem.offloaded_nvme_bytes:
        t.add_row("offloaded to NVMe", fmt_bytes(mem.offloaded_nvme_bytes))
    print_table(t)
    s = Table(title="step time breakdown")
    s.add_column("part")
    s.add_column("time", justify="right")
    s.add_column("share", justify="right")
    for k, v in est.step.parts().items():
        if v > 0:
            s.add_row(k.removesuffix("_s"), fmt_time(v), f"{v / est.step.total_s:.1%}")
    s.add_row(styled("[bold]total[/]"), styled(f"[bold]{fmt_time(est.step.total_s)}[/]"), "100%")
    print_table(s)
    console.print(f"tokens/s {est.tokens_per_s:,.0f}   MFU {est.mfu:.1%}   HFU {est.hfu:.1%}   "
                  f"{est.tflops_per_device:.0f} TFLOP/s per device", highlight=False)
    console.print(f"kernel efficiency: {est.efficiency_source}", highlight=False)
    for note in est.notes:
        console.print(f"note: {note}")
    if run:
        cost = f"${run['cost_usd']:,.0f}" if run["cost_usd"] else "n/a (no price)"
        console.print(f"run: {run['steps']:,} steps, {run['days']:.1f} days, {run['device_hours']:,.0f} device-hours, "
                      f"{run['energy_kwh']:,.0f} kWh, {cost}", highlight=False)
        console.print(run["energy_model"], highlight=False)
    if not est.fits and est.required_bytes <= est.capacity_bytes:  # the device fits; host memory or NVMe does not
        console.print(styled(f"[bold red]does not fit:[/] the device has {fmt_bytes(est.capacity_bytes - est.required_bytes)} "
                             "to spare, but the offloaded states do not fit the node (notes above)"))
    elif not est.fits:
        over = est.required_bytes - est.capacity_bytes
        console.print(styled(f"[bold red]does not fit:[/] needs {fmt_bytes(est.required_bytes)} of {fmt_bytes(est.capacity_bytes)} "
                             f"({fmt_bytes(over)} over). Try:"))
        for tip in fix_suggestions(est):
            console.print(f"  - {tip}")
    else:
        console.print(styled(f"[green]fits[/] with {fmt_bytes(est.capacity_bytes - est.required_bytes)} to spare"))


def layout_label(par: dict) -> str:
    """A layout in Megatron's words: 'tp 8 pp 8 dp 2 (sp, ZeRO-1, 6 virtual stages)'."""
    words = [f"{k} {par[k]}" for k in ("tp", "pp", "dp", "cp", "ep") if k in ("tp", "pp", "dp") or par.get(k, 1) > 1]
    if par.get("etp") is not None and par["etp"] != par.get("tp"):
        words.append(f"etp {par['etp']}")
    extra = [x for x in ("sp" if par.get("sequence_parallel") else "",
                         f"ZeRO-{par['zero_stage']}" if par.get("zero_stage") else "",
                         f"{par['interleave']} virtual stages" if par.get("interleave", 1) > 1 else "") if x]
    return " ".join(words) + (f" ({', '.join(extra)})" if extra else "")


def header(est) -> str:
    """The assumptions a train estimate rests on, in one line."""
    j = est.job
    return (f"{layout_label(est.parallel)}, framework {est.framework}"
            + "".join(f" ({s})" for s in TrainJob(**j).switches())
            + f", {j['precision']}, recompute {j['recompute']}, micro-batch {j['micro_batch']}, seq {j['seq_len']}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
