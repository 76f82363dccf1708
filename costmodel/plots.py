"""PNG plots for `--plot` (roofline, train, infer). matplotlib is the optional extra `plot`
(pip install 'costmodel[plot]'); it is imported here, lazily, with the non-interactive Agg
backend, so the rest of costmodel never needs it. Each function writes one file and returns its
path."""
from __future__ import annotations

from pathlib import Path

from .errors import InputError

GIB = 2.0**30
# Figure size in inches and resolution: a readable PNG in a CI artifact or a README.
FIGSIZE_ONE = (7.0, 5.0)
FIGSIZE_TWO = (12.0, 5.0)
DPI = 120


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'costmodel[plot]'", field="plot") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, path: str | Path, **kw) -> Path:
    """Save ``fig`` at ``path`` through costmodel.outputs: checked (never a shipped file, never over
    a file that is not an image) and written atomically (an error leaves an old plot as it was)."""
    from .outputs import atomic_target, check_output

    path = Path(path)
    try:
        check_output(path, "plot", flag="plot")
        with atomic_target(path) as tmp:
            fig.savefig(tmp, **({"dpi": DPI, "bbox_inches": "tight"} | kw))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot write the plot: {exc}", file=path, field="plot") from None
    finally:
        plt.close(fig)
    return path


def roofline_plot(ops: list[dict], peak_flops_per_s: float, bandwidth_bytes_per_s: float, path: str | Path,
                  title: str = "") -> Path:
    """Operators at (arithmetic intensity, achieved FLOP/s) on log-log axes under the compute roof
    (peak FLOP/s) and the bandwidth roof (intensity x bytes/s) (Williams et al. 2009). `ops` rows
    have op, flops, bytes, time_s; operators without FLOPs (pure data movement) have no intensity
    on a log axis and are listed in the legend title instead."""
    plt = _pyplot()
    pts = [o for o in ops if o["flops"] > 0 and o["bytes"] > 0 and o["time_s"] > 0]
    skipped = [o["op"] for o in ops if o not in pts]
    ridge = peak_flops_per_s / bandwidth_bytes_per_s
    xs = [o["flops"] / o["bytes"] for o in pts] + [ridge]
    lo, hi = min(xs) / 4.0, max(xs) * 4.0
    fig, ax = plt.subplots(figsize=FIGSIZE_ONE)
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(grid, [min(peak_flops_per_s, x * bandwidth_bytes_per_s) for x in grid], color="black", lw=2, label="roofline")
    ax.axhline(peak_flops_per_s, color="gray", ls=":", lw=1)
    ax.axvline(ridge, color="gray", ls=":", lw=1)
    ax.annotate(f"compute roof {peak_flops_per_s / 1e12:,.0f} TFLOP/s", (hi, peak_flops_per_s), ha="right", va="bottom", fontsize=8)
    ax.annotate(f"bandwidth roof {bandwidth_bytes_per_s / 1e12:.2f} TB/s", (lo * 1.2, lo * 1.2 * bandwidth_bytes_per_s),
                ha="left", va="bottom", fontsize=8, rotation=0)
    for o in pts:
        x, y = o["flops"] / o["bytes"], o["flops"] / o["time_s"]
        ax.scatter([x], [y], s=30, zorder=3, label=o["op"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved FLOP/s")
    ax.set_title(title or "roofline")
    ax.legend(fontsize=7, loc="lower right", title=("no FLOPs: " + ", ".join(skipped)) if skipped else None,
              title_fontsize=7)
    ax.grid(True, which="both", alpha=0.2)
    return _save(fig, plt, path)


def train_plot(est, path: str | Path, max_memory_fraction: float | None = None) -> Path:
    """Two panels: memory per device as a stacked bar (allocated parts, then CUDA context and
    fragmentation up to the required total) against the device capacity; and the step-time
    breakdown."""
    plt = _pyplot()
    mem = est.memory
    parts = [("weights", mem.weights_bytes), ("gradients", mem.grads_bytes), ("optimizer states", mem.optimizer_bytes),
             ("master weights", mem.master_bytes), ("gradient buffers", mem.grad_buffers_bytes),
             ("weight copies", mem.weight_copies_bytes), ("activations", mem.activations_bytes),
             ("logits / loss", mem.logits_bytes), ("runtime", mem.runtime_bytes)]
    shown = sum(v for _, v in parts)
    # The parts are the rows of `costmodel train`'s table; they need not add up to the peak (the
    # gradients row is their largest size, not necessarily alive at the peak phase), so the peak
    # and the required total are drawn as lines. When the parts fall short of the peak the rest
    # ("other at peak": e.g. the final norm's output) is stacked, then context + fragmentation.
    if shown <= mem.peak_bytes:
        parts += [("other at peak", mem.peak_bytes - shown),
                  ("CUDA context + fragmentation", est.required_bytes - mem.peak_bytes)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=FIGSIZE_TWO)
    bottom = 0.0
    for name, v in parts:
        if v > 0:
            ax1.bar([0], [v / GIB], bottom=[bottom / GIB], width=0.5, label=f"{name} {v / GIB:,.1f} GiB")
            bottom += v
    cap = est.capacity_bytes / GIB
    ax1.plot([-0.3, 0.3], [mem.peak_bytes / GIB] * 2, color="black", lw=1.5, label=f"peak allocated {mem.peak_bytes / GIB:,.1f} GiB")
    ax1.plot([-0.3, 0.3], [est.required_bytes / GIB] * 2, color="black", ls="--", lw=1.5,
             label=f"required {est.required_bytes / GIB:,.1f} GiB")
    ax1.axhline(cap, color="red", lw=2, label=f"capacity {cap:,.1f} GiB")
    if max_memory_fraction:
        ax1.axhline(cap * max_memory_fraction, color="red", ls="--", lw=1, label=f"limit {max_memory_fraction:.0%}")
    ax1.set_xticks([0])
    ax1.set_xticklabels([f"{est.hardware} ({mem.peak_phase})"])
    ax1.set_xlim(-0.6, 1.8)
    ax1.set_ylabel("GiB per device")
    ax1.set_title("memory per device" + ("" if est.fits else " (does not fit)"))
    ax1.legend(fontsize=7, loc="upper right")
    steps = [(k.removesuffix("_s"), v) for k, v in est.step.parts().items() if v > 0]
    names = [k for k, _ in steps]
    vals = [v * 1e3 for _, v in steps]
    ax2.barh(names, vals, color="tab:blue")
    for i, v in enumerate(vals):
        ax2.annotate(f"{v:,.1f} ms", (v, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel("ms per step")
    ax2.set_title(f"step {est.step.total_s * 1e3:,.0f} ms, MFU {est.mfu:.1%}")
    fig.suptitle(f"{est.model_id} on {est.devices} x {est.hardware}")
    return _save(fig, plt, path)


def infer_plot(est, path: str | Path, curve: list[dict] | None = None) -> Path:
    """Decode throughput (tokens/s) and per-token latency (TPOT) against batch, log2 batch axis,
    with the largest batch that fits in memory marked. `curve` (rows batch, tpot_s,
    tokens_per_s) defaults to the estimate's own curve."""
    plt = _pyplot()
    curve = curve if curve is not None else est.throughput_curve
    if not curve:
        raise InputError("no batch fits in device memory: nothing to plot", field="plot")
    b = [p["batch"] for p in curve]
    fig, ax = plt.subplots(figsize=FIGSIZE_ONE)
    ax.plot(b, [p["tokens_per_s"] for p in curve], "o-", color="tab:blue", label="throughput")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (concurrent sequences)")
    ax.set_ylabel("tokens/s", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(b, [p["tpot_s"] * 1e3 for p in curve], "s--", color="tab:orange", label="TPOT")
    ax2.set_ylabel("ms per output token (TPOT)", color="tab:orange")
    mb = est.max_batch_that_fits
    if mb:
        ax.axvline(mb, color="red", lw=2, ls=":")
        ax.annotate(f"memory limit: batch {mb}", (mb, ax.get_ylim()[1]), ha="right", va="top", rotation=90,
                    fontsize=8, color="red")
    job = est.job
    ax.set_title(f"{est.model_id} on {est.tp} x {est.hardware}, {job['prompt_len']}+{job['gen_len']} tokens")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.2)
    return _save(fig, plt, path)


def layout_label(lay, per_micro_batch: bool = True, hardware: bool = False) -> str:
    """A search layout in one line, with every field that tells two layouts apart (the devices and
    gradient accumulation follow from them and the batch): 'tp2+sp pp4v4 dp8 cp2 z2 off mb1
    selective'. +sp: sequence parallelism; vN: virtual pipeline stages; etpN: experts split over N
    ranks (where not tp); off: optimizer offloaded to the host. ``per_micro_batch``: add the
    micro-batch and recompute (the search table has columns for them); ``hardware``: prefix the
    hardware id (a search over several)."""
    g = lambda k, d: getattr(lay, k, d)  # noqa: E731
    s = f"tp{lay.tp}{'+sp' if g('sequence_parallel', False) else ''} pp{lay.pp}"
    s += f"v{g('interleave', 1)}" if g("interleave", 1) > 1 else ""
    s += f" dp{lay.dp}" + (f" cp{g('cp', 1)}" if g("cp", 1) > 1 else "") + (f" ep{g('ep', 1)}" if g("ep", 1) > 1 else "")
    s += f" etp{g('etp', None)}" if g("etp", None) is not None and g("etp", None) != lay.tp else ""
    s += f" z{lay.zero_stage}" + (" off" if g("offload_optimizer", "none") != "none" else "")
    if per_micro_batch:
        s += f" mb{lay.micro_batch}" + (f" {lay.recompute}" if lay.recompute != "none" else "")
    return (f"{lay.hardware} " if hardware and g("hardware", None) else "") + s


def search_plot(res, path: str | Path) -> Path:
    """`costmodel search --plot`: the best layouts at (step time, cost per million tokens), the
    time/cost Pareto front drawn as a line; MFU on the y axis when no price is known."""
    plt = _pyplot()
    cands = list(getattr(res, "top", []) or [])
    front = list(getattr(res, "pareto", []) or [])
    if not cands and not front:
        raise InputError("no layout fits: nothing to plot", field="plot")
    priced = all(c.cost_per_million_tokens_usd is not None for c in cands + front)

    def y(c):
        return c.cost_per_million_tokens_usd if priced else c.mfu * 100.0

    fig, ax = plt.subplots(figsize=FIGSIZE_ONE)
    ax.scatter([c.step_s for c in cands], [y(c) for c in cands], s=30, color="tab:blue", zorder=3, label="best layouts")
    several_hw = len({getattr(c.layout, "hardware", None) for c in cands + front}) > 1
    for c in cands[:10]:
        ax.annotate(layout_label(c.layout, hardware=several_hw), (c.step_s, y(c)), xytext=(4, 2),
                    textcoords="offset points", fontsize=7)
    if front:
        front = sorted(front, key=lambda c: c.step_s)
        # above the layouts' dots, a solid 2-point line: visible in the plot and in its legend entry
        ax.plot([c.step_s for c in front], [y(c) for c in front], color="tab:red", ls="-", lw=2, marker="o", ms=5,
                mfc="white", zorder=4, label=f"Pareto front ({len(front)} layout{'s' if len(front) != 1 else ''})")
    ax.set_xlabel("step time (s)")
    ax.set_ylabel("USD per million tokens" if priced else "MFU (%)")
    ax.set_title(f"{res.model}: {res.global_batch} x {res.seq_len} tokens per step")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.2)
    return _save(fig, plt, path)
