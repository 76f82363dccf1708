"""`costmodel hardware list|show`."""
from __future__ import annotations

from typing import Optional

import typer

from ..specs import AcceleratorSpec, CpuSpec, NodeSpec, NvmeSpec
from ..units import fmt_bytes, fmt_si
from . import common
from .common import HardwareFileOpt, JsonOpt, emit_json, library, print_table

hw = typer.Typer(help="List and show hardware specs.", no_args_is_help=True, rich_markup_mode=None)


def _summary(spec) -> dict:
    d = {"id": spec.id, "kind": spec.kind, "name": spec.name, "vendor": spec.vendor}
    if isinstance(spec, (AcceleratorSpec, CpuSpec)):
        # a CPU spec's capacity is the most its platform supports (DIMMs are bought separately),
        # not memory a machine has: it is listed as such
        d["max_memory_bytes" if isinstance(spec, CpuSpec) else "memory_bytes"] = spec.memory.capacity_bytes
        d["memory_bandwidth_bytes_per_s"] = spec.memory.bandwidth_bytes_per_s
        d["bf16_flops"] = spec.peak_flops.bf16
        d["tdp_w"] = spec.tdp_w
    if isinstance(spec, NvmeSpec):
        d["capacity_bytes"] = spec.capacity_bytes
        d["read_bytes_per_s"] = spec.read_bytes_per_s
    if isinstance(spec, NodeSpec):
        d["device"] = spec.device
        d["devices_per_node"] = spec.devices_per_node
    d["price_per_hour_usd"] = spec.price_per_hour_usd
    d["unsourced"] = spec.unsourced()  # figures without a citation (a user's own file)
    return d


@hw.command("list")
def list_cmd(
    kind: Optional[str] = typer.Option(None, help="Only this kind: gpu, tpu, cpu, nvme, node."),
    json_out: bool = JsonOpt,
    hardware_file: Optional[list[str]] = HardwareFileOpt,
):
    """List every hardware spec (shipped, COSTMODEL_HARDWARE_PATH, --hardware-file)."""
    lib = library(hardware_file)
    rows = [_summary(lib.specs[i]) for i in lib.ids() if kind is None or lib.specs[i].kind == kind]
    if json_out:
        emit_json(rows)
        return
    from rich.table import Table

    console = common.console
    t = Table(title="Hardware specs")
    for c in ("id", "kind", "name", "memory", "bandwidth", "bf16 dense", "TDP", "$/h"):
        t.add_column(c)
    for r in rows:
        t.add_row(
            r["id"], r["kind"], r["name"],
            _memory_cell(r),
            fmt_si(r["memory_bandwidth_bytes_per_s"], "B/s") if r.get("memory_bandwidth_bytes_per_s") else (fmt_si(r["read_bytes_per_s"], "B/s") if r.get("read_bytes_per_s") else "-"),
            fmt_si(r["bf16_flops"], "FLOP/s") if r.get("bf16_flops") else "-",
            f"{r['tdp_w']:.0f} W" if r.get("tdp_w") else "-",
            f"{r['price_per_hour_usd']:.2f}" if r.get("price_per_hour_usd") else "-",
        )
    print_table(t)
    unsourced = [r["id"] for r in rows if r["unsourced"]]
    if unsourced:
        console.print(f"unsourced (user files without citations): {', '.join(unsourced)}", highlight=False)
    if any(r.get("max_memory_bytes") for r in rows):
        console.print("CPU memory: 'max' is the most the platform supports, not memory installed", highlight=False)


@hw.command("show")
def show_cmd(spec_id: str, json_out: bool = JsonOpt, hardware_file: Optional[list[str]] = HardwareFileOpt):
    """Show one spec with every field in base units and its sources."""
    lib = library(hardware_file)
    spec = lib.get(spec_id)
    data = spec.model_dump(mode="json")
    if json_out:
        emit_json({**data, "unsourced": spec.unsourced()})
        return
    from rich.table import Table

    t = Table(title=f"{spec.id}: {spec.name}", show_header=False)
    t.add_column("field")
    t.add_column("value")

    def add(prefix, obj):
        for k, v in obj.items():
            if isinstance(v, dict) and k != "sources":
                add(f"{prefix}{k}.", v)
            elif v is not None and k != "sources":
                val = _fmt(k, v)
                if isinstance(spec, CpuSpec) and prefix + k == "memory.capacity_bytes":
                    val += " (the platform maximum, not installed memory)"
                t.add_row(prefix + k, val)

    add("", data)
    for k, v in spec.sources.items():
        t.add_row(f"source[{k}]", v)
    if spec.unsourced():
        t.add_row("unsourced", ", ".join(spec.unsourced()) + " (no citation: a user's own file)")
    t.add_row("file", str(lib.files[spec.id]))
    print_table(t)


def _memory_cell(r: dict) -> str:
    if r.get("memory_bytes"):
        return fmt_bytes(r["memory_bytes"])
    if r.get("max_memory_bytes"):
        return f"max {fmt_bytes(r['max_memory_bytes'])}"
    return fmt_bytes(r["capacity_bytes"]) if r.get("capacity_bytes") else "-"


def _fmt(key: str, v) -> str:
    if isinstance(v, float):
        if key.endswith("bytes_per_s") or "bandwidth" in key:
            return fmt_si(v, "B/s")
        if key.endswith("bytes") or key == "capacity_bytes":
            return fmt_bytes(v)
        if key.endswith("_s"):
            return f"{v * 1e6:.2f} us"
        if key.endswith("_w"):
            return f"{v:.0f} W"
        if key in ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "fp4"):
            return fmt_si(v, "FLOP/s")
        return f"{v:g}"
    return str(v)


def register(app: typer.Typer) -> None:
    app.add_typer(hw, name="hardware")
