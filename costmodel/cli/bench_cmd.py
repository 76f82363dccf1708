"""`costmodel bench` (run microbenchmarks, write kernel records) and `costmodel calibrate`
(fit an efficiency overlay from fresh runs or existing records, optionally checking held-back shapes)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import InputError
from ..units import fmt_si, fmt_time
from .common import HardwareFileOpt, JsonOpt, console, emit_json, err_console, print_table, progress_bar, styled

BackendOpt = typer.Option("auto", "--backend", help="numpy (host CPU), torch (GPU, or CPU without one), nccl (under torchrun), auto.")
QuickOpt = typer.Option(False, "--quick", help="A short run (about a minute on a small CPU).")
OpsOpt = typer.Option(None, "--ops", help="Comma-separated ops or groups: gemm, gemm_llm, mem_copy, mem_read, elementwise, sdpa, host, collectives.")
HardwareOpt = typer.Option(None, "--hardware", help="Spec id written into the records (detected for GPUs; 'cpu-host' for numpy).")
ClockOpt = typer.Option("wall", "--clock", help="numpy: time calls by wall clock, or by the thread's CPU time ('thread': "
                        "one BLAS thread on a shared host, OPENBLAS_NUM_THREADS=1).")


def _bench(backend: str, quick: bool, ops: Optional[str], hardware: Optional[str], scratch: Optional[str], progress: bool,
           before_run=None, clock: str = "wall") -> tuple[list[dict], list[str], dict]:
    """Run the benchmarks; return (records, errors, environment). Nothing is written here: the
    caller writes its outputs when the run has succeeded. ``before_run(hardware_id)`` is called
    once the backend knows the device, before anything is measured."""
    from ..bench import env_info, make_bench, run_cases
    from ..bench.nvme import nvme_case

    if clock not in ("wall", "thread"):
        raise InputError(f"--clock {clock!r}: expected wall or thread", field="clock")
    bench = make_bench(backend, hardware=hardware, quick=quick, clock=clock)
    opset = set(o.strip() for o in ops.split(",")) if ops else None
    cases = bench.cases(opset)
    if scratch:
        cases.append(nvme_case(scratch, quick, bench.hardware))
    if not cases:
        raise InputError(f"no benchmark matches --ops {ops!r}", field="ops")
    if before_run is not None:
        before_run(bench.hardware)
    rounds = getattr(bench, "rounds", 1)
    if rounds <= 1:
        records, errors = run_cases(cases, progress=progress, out=None, title=f"{bench.backend}: {bench.device}")
    else:
        # several short rounds in shuffled order (a shared host's load comes and goes); the
        # backend says which round to keep (numpy on a shared host: the fastest; GPUs: the median)
        import random

        from ..bench.records import merge_rounds

        raw, errors = [], []
        for rnd in range(rounds):
            order = list(cases)
            random.Random(1000 + rnd).shuffle(order)
            recs, errs = run_cases(order, progress=progress, out=None, title=f"{bench.backend}: {bench.device} ({rnd + 1}/{rounds})")
            raw += recs
            errors += errs
        records = merge_rounds(raw, stat=getattr(bench, "round_stat", "median"))
    if hasattr(bench, "close"):
        bench.close()
    info = env_info(bench.backend)
    info.update({"hardware": bench.hardware, "device": bench.device})
    return records, errors, info


def _jsonl(records: list[dict]) -> str:
    import json

    return "".join(json.dumps(r, sort_keys=False) + "\n" for r in records)


def _check_scratch(scratch: Optional[str], outputs: list[tuple[str, Optional[Path]]]) -> None:
    """--scratch names a new file (created, timed, deleted): checked before anything runs."""
    if not scratch:
        return
    p = Path(scratch)
    if p.exists() or p.is_symlink():
        raise InputError("scratch file already exists; name a new file (it is deleted afterwards)", file=p, field="scratch")
    if not (p.parent if str(p.parent) else Path(".")).is_dir():
        raise InputError("directory of the scratch file does not exist", file=p, field="scratch")
    for flag, o in outputs:
        if o is not None and Path(o).resolve() == p.resolve():
            raise InputError(f"is also the --{flag} output", file=p, field="scratch")


DEFAULT_BENCH_OUT = Path("kernels.jsonl")


def bench_cmd(
    backend: str = BackendOpt,
    quick: bool = QuickOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="JSONL file of kernel records (SCHEMA.md format), written when the run ends (an existing file is replaced then, atomically; an interrupted run leaves it as it was). Default: kernels.jsonl, which must not exist yet."),
    ops: Optional[str] = OpsOpt,
    hardware: Optional[str] = HardwareOpt,
    scratch: Optional[str] = typer.Option(None, "--scratch", help="A new file on the drive to test (NVMe sequential read/write); removed afterwards."),
    clock: str = ClockOpt,
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    json_out: bool = JsonOpt,
):
    """Run microbenchmarks on this machine and write raw kernel records (JSONL)."""
    from ..outputs import check_output, write_output

    if out is None:
        out = DEFAULT_BENCH_OUT
        if out.exists() or out.is_symlink():
            raise InputError("exists; name the output with --out to replace it (or move it away)", file=out, field="out")
    check_output(out, "records", flag="out")
    _check_scratch(scratch, [("out", out)])
    records, errors, info = _bench(backend, quick, ops, hardware, scratch, not no_progress and not json_out, clock=clock)
    if records:
        write_output(out, _jsonl(records), "records", flag="out")
    if json_out:
        emit_json({"out": str(out) if records else None, "records": len(records), "errors": errors, "environment": info})
    else:
        _records_table(records)
        console.print(f"{len(records)} records -> {out}" if records else f"no records; {out} not written")
    for e in errors:
        err_console.print(styled(f"[yellow]failed:[/] {escape(str(e))}"), highlight=False)
    if errors and not records:
        raise typer.Exit(1)


def _records_table(records: list[dict]):
    from ..bench.runner import summarize
    from ..calibration import describe

    t = Table(title="kernel records")
    for c in ("op", "shape", "result"):
        t.add_column(c)
    for r in records:
        t.add_row(r["op"], describe(r), summarize(r))
    print_table(t)


def _spec_for(hardware_id: str | None, hardware_file):
    if not hardware_id:
        return None
    from .common import library

    lib = library(hardware_file)
    if hardware_id in lib.specs:
        try:
            return lib.device(hardware_id)
        except InputError:
            return None
    return None


def calibrate_cmd(
    out: Path = typer.Option(..., "--out", help="Overlay YAML to write (atomically); with --nccl-tests, the measured node spec. Never inside the shipped hardware/ directory (overlays: except hardware/calibrated/)."),
    nccl_tests: Optional[list[Path]] = typer.Option(None, "--nccl-tests", help="nccl-tests logs (stdout of all_reduce_perf, all_gather_perf, reduce_scatter_perf, alltoall_perf, sendrecv_perf; more logs may follow, as in --nccl-tests logs/*.log): fit only the cluster's scale_out.scaling and write a node spec."),
    more_logs: Optional[list[Path]] = typer.Argument(None, metavar="LOG", hidden=True, show_default=False),
    node: Optional[str] = typer.Option(None, "--node", help="With --nccl-tests: the node spec to copy (default: the one whose device is the logs' GPU with devices_per_node = ranks per node)."),
    new_id: Optional[str] = typer.Option(None, "--id", help="With --nccl-tests: id of the written node spec (default: <node>-measured)."),
    backend: str = BackendOpt,
    quick: bool = QuickOpt,
    records: Optional[list[Path]] = typer.Option(None, "--records", help="Fit these kernel-record JSONL files instead of running benchmarks."),
    check: bool = typer.Option(False, "--check", help="Hold back a fraction of the shapes, fit the rest, report the held-back error."),
    holdout: float = typer.Option(0.25, "--holdout", min=0.05, max=0.5, help="Fraction held back by --check."),
    seed: int = typer.Option(0, "--seed", help="Seed for the held-back choice."),
    splits: int = typer.Option(1, "--splits", min=1, max=100, help="With --check: repeat it over this many random splits (seeds --seed, --seed + 1, ...) and report every held-back row."),
    max_error: Optional[float] = typer.Option(None, "--max-error", help="With --check: exit 1 if a GEMM or bandwidth held-back error exceeds this (0.15 = 15%)."),
    ops: Optional[str] = OpsOpt,
    hardware: Optional[str] = HardwareOpt,
    clock: str = ClockOpt,
    save_records: Optional[Path] = typer.Option(None, "--save-records", help="Also keep the fresh run's records in this JSONL file (written when the benchmarks end, before the fit)."),
    reference_records: Optional[Path] = typer.Option(None, "--reference-records", help="Isolated-call records timed on another host (e.g. the truth file): fit one host call-gap offset to them, keeping the GPU curves; host copies among them replace the fitted host links (the host sets their rate)."),
    round_stat: str = typer.Option("median", "--round-stat", help="Per-round records (a 'round' field, as in the GPU harness's X-rounds.jsonl) are merged into one record per case: median (as SCHEMA.md's records are timed) or min (the least-disturbed round)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    json_out: bool = JsonOpt,
    hardware_file: Optional[list[str]] = HardwareFileOpt,
):
    """Fit a calibration overlay (efficiency curves per op and dtype, collective alpha/beta); or, with
    --nccl-tests LOG [LOG]..., a cluster's measured scale-out scaling, written as a node spec."""
    if nccl_tests or more_logs:
        if not nccl_tests:
            raise InputError(f"unexpected argument {str(more_logs[0])!r} (only --nccl-tests takes several files)")
        given = [flag for flag, v in (("--records", records), ("--check", check), ("--ops", ops), ("--save-records", save_records),
                                      ("--reference-records", reference_records), ("--hardware", hardware)) if v]
        if given:
            raise InputError(f"{', '.join(given)} cannot be combined with --nccl-tests (it only fits the cluster's scaling)",
                             field="nccl-tests")
        _calibrate_nccl_tests([*nccl_tests, *(more_logs or [])], out, node, new_id, json_out, hardware_file)
        return
    if node or new_id:
        raise InputError("--node and --id only apply with --nccl-tests", field="node" if node else "id")
    from .. import calibration as cal
    from ..bench.records import merge_rounds, read_jsonl
    from ..outputs import check_output, write_output

    # every output is checked before anything is measured or fitted (costmodel.outputs)
    inputs = [*(("records", r) for r in records or []), ("reference-records", reference_records),
              *(("hardware-file", h) for h in hardware_file or [])]
    guard = dict(inputs=inputs, others=[("save-records", save_records)])
    cal.check_writable(out, hardware, **guard)
    if save_records is not None:
        if records:
            raise InputError("only applies to a fresh benchmark run, not to --records", field="save-records")
        check_output(save_records, "records", flag="save-records", inputs=inputs, others=[("out", out)])
    if round_stat not in ("min", "median"):
        raise InputError(f"--round-stat {round_stat!r}: expected min or median", field="round-stat")
    meta: dict = {}
    if records:
        recs: list[dict] = []
        for p in records:
            recs.extend(read_jsonl(p))
        meta["records"] = [str(p) for p in records]
        if any("round" in r for r in recs):
            recs = merge_rounds(recs, stat=round_stat)
            meta["round_stat"] = round_stat
        envs = _sibling_env(records)
        if envs:
            meta["environment"] = envs
        if hardware:
            recs = [r for r in recs if r.get("hardware") == hardware]
        ids = sorted({r.get("hardware") for r in recs})
        if len(ids) > 1:
            raise InputError(f"records are from several devices ({', '.join(map(str, ids))}); pick one with --hardware", field="hardware")
        if not recs:
            raise InputError("no kernel records in the given files" + (f" for {hardware}" if hardware else ""), field="records")
        if ops:
            want = set(o.strip() for o in ops.split(","))
            recs = [r for r in recs if r["op"] in want or cal.family(r["op"]) in want]
            if not recs:
                raise InputError(f"no kernel records of --ops {ops!r} in the given files", field="ops")
        cal.check_writable(out, recs[0].get("hardware") or hardware, **guard)  # the overlay's device is known now
    else:
        recs, errors, info = _bench(backend, quick, ops, hardware, None, not no_progress and not json_out,
                                    before_run=lambda hw: cal.check_writable(out, hw, **guard), clock=clock)
        if clock != "wall":
            meta["clock"] = clock
        for e in errors:
            err_console.print(styled(f"[yellow]failed:[/] {escape(str(e))}"), highlight=False)
        if not recs:
            raise InputError("the benchmark run produced no records", field="backend")
        if save_records is not None:  # the measurements are kept whatever the fit does next
            write_output(save_records, _jsonl(recs), "records", flag="save-records", inputs=inputs, others=[("out", out)])
        meta.update({k: info.get(k) for k in ("date", "backend", "device", "torch", "cuda", "nccl", "driver", "numpy", "cpu") if info.get(k)})
        if save_records:
            meta["records"] = str(save_records)
    device = recs[0].get("hardware") or hardware or "unknown"
    spec = _spec_for(device, hardware_file)
    meta["n_records"] = len(recs)
    result: dict = {"out": str(out), "device": device, "records": len(recs)}
    failed = False
    if check:
        with progress_bar(disable=no_progress or json_out) as prog:
            task = prog.add_task(f"held-back check, {splits} split{'s' if splits > 1 else ''}", total=splits)
            iso, stream = cal.holdout_checks(recs, splits=splits, fraction=holdout, seed=seed, spec=spec, device=device,
                                             on_split=lambda i: prog.advance(task))
        summary = iso.summary()
        result["check"] = {"holdout": holdout, "seed": seed, "splits": splits, "call": summary,
                           "stream": stream.summary() if stream else None, "rows": iso.rows}
        if max_error is not None:
            failed = any(summary.get(f, {}).get("max_abs_error", 0) > max_error for f in ("gemm", "bandwidth"))
        meta["check"] = {f: {"n": v["n"], "median_abs_error": round(v["median_abs_error"], 4), "max_abs_error": round(v["max_abs_error"], 4)}
                         for f, v in summary.items()}
        if splits > 1:
            meta["check"]["splits"] = {"n": splits, "first_seed": seed}
    overlay = cal.fit_overlay(recs, device=device, spec=spec, meta=meta)
    if reference_records:
        ref = [r for r in read_jsonl(reference_records) if r.get("hardware") == device]
        delta = cal.fit_call_gap_offset(overlay, ref, spec)
        overlay = cal.with_call_gap_offset(overlay, delta)
        overlay.setdefault("measured", {})["call_gap_offset"] = {"s": float(f"{delta:.3g}"), "records": str(reference_records), "n": len(ref)}
        result["call_gap_offset_s"] = delta
        links = cal.reference_host_links(overlay, ref)
        if links:
            overlay = dict(overlay, host={**(overlay.get("host") or {}), **cal._rounded(links)})
            overlay["measured"]["host_links"] = {"ops": sorted(links), "records": str(reference_records)}
            result["reference_host_links"] = links
    cal.write_overlay(overlay, out, **guard)
    result["overlay"] = overlay
    if json_out:
        emit_json(result)
    else:
        _overlay_table(overlay)
        if check:
            _check_table(result["check"])
        src = f"spec {spec.id}" if spec is not None else "no spec (absolute rates only)"
        console.print(f"fitted {len(recs)} records ({src}) -> {out}")
    if failed:
        err_console.print(styled(f"[bold red]check failed:[/] a held-back GEMM or bandwidth shape is off by more than {max_error:.0%}"))
        raise typer.Exit(1)


def _calibrate_nccl_tests(logs: list[Path], out: Path, node: Optional[str], new_id: Optional[str], json_out: bool,
                         hardware_file) -> None:
    """`calibrate --nccl-tests`: fit scale_out.scaling from nccl-tests logs, write a node spec."""
    from ..bench.nccl_tests import parse_files
    from ..cluster_fit import check_node_out, choose_base_node, fit_scaling, measured_node, write_node

    from ..specs import read_yaml
    from .common import library

    guard = dict(inputs=[*(("nccl-tests", p) for p in logs), *(("hardware-file", h) for h in hardware_file or [])])
    check_node_out(out, **guard)
    fit = fit_scaling(parse_files(logs))
    lib = library(hardware_file)
    base, notes = choose_base_node(lib, fit, node)
    new_id = new_id or f"{base.id}-measured"
    data = measured_node(read_yaml(lib.files[base.id]), fit, new_id=new_id, base_id=base.id, out=out)
    header = (f"{new_id}: {base.id} with scale_out.scaling fitted from nccl-tests logs by `costmodel calibrate --nccl-tests`\n"
              f"(costmodel/cluster_fit.py: bus bandwidth = median busbw of the largest sizes; step latency from the smallest).\n"
              f"Logs: {', '.join(str(p) for p in logs)}")
    write_node(data, out, header=header, **guard)
    warnings = notes + fit.warnings
    if json_out:
        emit_json({"out": str(out), "id": new_id, "base": base.id, **fit.to_json(), "warnings": warnings})
    else:
        _nccl_table(fit)
        console.print(f"step latency {fmt_time(fit.step_latency_s)} (median over {len(fit.latency_logs)} multi-node "
                      f"log{'s' if len(fit.latency_logs) != 1 else ''}); node {new_id} (copy of {base.id}) -> {out}",
                      highlight=False)
    for w in warnings:
        err_console.print(styled(f"[yellow]warning:[/] {escape(w)}"), highlight=False)


def _nccl_table(fit) -> None:
    t = Table(title=f"scale-out scaling: {fit.ranks_per_node} x {fit.gpu or 'GPU'} per node")
    for c, j in (("op", "left"), ("nodes", "right"), ("ranks", "right"), ("bus bandwidth GB/s", "right"),
                 ("step latency", "right"), ("logs", "left")):
        t.add_column(c, justify=j)
    for g in fit.groups:
        bw = f"{g.bus_bandwidth_bytes_per_s / 1e9:.1f}" + ("" if g.used else " (not used)")
        lat = fmt_time(g.step_latency_s) if g.step_latency_s is not None else "-"
        t.add_row(g.op, str(g.nodes), str(g.ranks), bw, lat, str(len(g.logs)))
    print_table(t)


def _sibling_env(paths: list[Path]) -> list[dict]:
    """Provenance (date, driver, library versions) from ``X-env.json`` files beside ``X-kernels.jsonl``
    (or ``X-rounds.jsonl``)."""
    from ..inputs import load_json

    out = []
    for p in paths:
        env = Path(str(p).replace("-kernels.jsonl", "-env.json").replace("-rounds.jsonl", "-env.json"))
        if env != Path(p) and env.is_file():
            try:
                d = load_json(env)
            except InputError:  # provenance is optional: an unreadable file is left out
                continue
            if not isinstance(d, dict):
                continue
            out.append({k: d.get(k) for k in ("date", "device", "driver", "torch", "cuda", "nccl", "numpy", "world") if d.get(k) is not None})
    return out


def _overlay_table(ov: dict):
    t = Table(title=f"calibration: {ov['device']}")
    t.add_column("kernel")
    t.add_column("achieved")
    t.add_column("notes")
    g = ov.get("gemm")
    if g:
        for dt, d in g["dtypes"].items():
            eff = f"{d['efficiency']:.0%} of peak" if "efficiency" in d else ""
            t.add_row(f"GEMM {dt}", fmt_si(d["flops_per_s"], "FLOP/s"), f"{eff} floor {fmt_time(d['stream_floor_s'])}".strip())
        t.add_row("GEMM memory-bound", fmt_si(g["memory_bytes_per_s"], "B/s"), f"x_half {g['x_half']:.3g}" if g.get("x_half") else "")
        if g.get("pack_bytes_per_s"):
            t.add_row("GEMM operand packing", fmt_si(g["pack_bytes_per_s"], "B/s"), "CPU BLAS, before each call's compute")
        res = g.get("residual")
        if res:
            shapes = sum(len(v) for v in res["dtypes"].values())
            t.add_row("GEMM per-shape residual", f"{shapes} shapes",
                      f"length {res['length_octaves']:.2g} octave; curve alone {res['curve_mean_abs_log_error']:.1%}, "
                      f"smoothed to unmeasured shapes {res['cv_mean_abs_log_error']:.1%} (leave-one-shape-out)")
    for k, v in (ov.get("memory") or {}).items():
        t.add_row(f"memory {k}", fmt_si(v["bytes_per_s"], "B/s"), f"floor {fmt_time(v['stream_floor_s'])}")
    for k, v in (ov.get("elementwise") or {}).items():
        t.add_row(k, fmt_si(v["bytes_per_s"], "B/s"), "")
    for k, v in (ov.get("attention") or {}).items():
        t.add_row(k, fmt_si(v["flops_per_s_max"], "FLOP/s"), f"d_half {v['head_dim_half']:.3g}, causal block {v['causal_block']:.3g}")
    for k, v in (ov.get("host") or {}).items():
        t.add_row(k, fmt_si(v["bytes_per_s"], "B/s"), f"latency {fmt_time(v['latency_s'])}")
    for op, worlds in (ov.get("collectives") or {}).items():
        for w, v in worlds.items():
            t.add_row(f"{op} x{w}", fmt_si(v["busbw_bytes_per_s"], "B/s") + " bus", f"alpha {fmt_time(v['alpha_s'])}")
    print_table(t)


def _check_table(chk: dict):
    over = f", {chk['splits']} random splits" if chk.get("splits", 1) > 1 else ""
    t = Table(title=f"held-back shapes ({chk['holdout']:.0%}{over}), prediction / measurement - 1")
    for c in ("family", "n", "median |error|", "max |error|", "back-to-back max"):
        t.add_column(c)
    stream = chk.get("stream") or {}
    for fam, v in chk["call"].items():
        s = stream.get(fam)
        t.add_row(fam, str(v["n"]), f"{v['median_abs_error']:.1%}", f"{v['max_abs_error']:.1%}", f"{s['max_abs_error']:.1%}" if s else "-")
    print_table(t)
    worst = sorted(chk["rows"], key=lambda r: -abs(r["error"]))[:8]
    if worst:
        w = Table(title="largest held-back errors")
        for c in ("op", "shape", "measured", "predicted", "error"):
            w.add_column(c)
        for r in worst:
            w.add_row(r["op"], r["shape"], fmt_time(r["measured_s"]), fmt_time(r["predicted_s"]), f"{r['error']:+.1%}")
        console.print(w)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)
    app.command("calibrate")(calibrate_cmd)
