"""Fit a node spec's ``scale_out.scaling`` (costmodel.cluster) from nccl-tests logs
(``costmodel calibrate --nccl-tests``).

Logs are read by :mod:`costmodel.bench.nccl_tests`; every log must come from the same GPU and put
the same number of ranks on every host (the node spec has one ``devices_per_node``).

- **Bus bandwidth**, per collective and node count: the logs of that collective over that many
  nodes are pooled, and the bandwidth is the median out-of-place ``busbw`` over the rows of the
  three largest message sizes among them (``LARGE_SIZES``). The largest messages are where the
  bus bandwidth has levelled off, which is what the table holds; the median of several sizes
  (and of repeated logs) shrugs off one disturbed row. Logs inside one node give the 1-node
  entry. A collective measured only inside one node is left out of the table: a single 1-node
  point would be read as that (NVLink) bandwidth at every node count, while leaving it out lets
  it fall back to a measured table (costmodel.cluster: reduce_scatter <-> all_gather ->
  all_reduce) or to the NIC line rate.
- **Step latency**, from the logs that span several nodes: for each of a log's three smallest
  message sizes (``SMALL_SIZES``) the cluster model is solved for the latency,

      step_latency = (time - bus_factor(op, ranks) * size / bus_bandwidth(op, nodes)) / ring_steps(op, ranks)

  (at a few bytes the bandwidth term is a rounding error, so this is the small-message time
  per ring step), clipped at zero; a log's value is the median over those sizes and the fit is
  the median over the multi-node logs.

The result is written as a node spec: a copy of a base node's YAML with a new id and
``scale_out.scaling`` set (units as text), and ``sources.scale_out`` naming the logs.
"""
from __future__ import annotations

import copy
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .bench.nccl_tests import NcclTestsLog
from .cluster import ring_steps
from .comm import bus_factor
from .errors import InputError

LARGE_SIZES = 3  # the bus bandwidth is the median busbw over the rows of this many largest sizes
SMALL_SIZES = 3  # a log's step latency is the median over this many smallest sizes
PLATEAU_BYTES = 64 * 2**20  # warn when a table's largest message is below this
SMALL_BYTES = 64 * 2**10    # warn when a multi-node log's smallest message is above this


@dataclass
class GroupFit:
    """The fit for one collective at one node count."""

    op: str
    nodes: int
    ranks: int
    bus_bandwidth_bytes_per_s: float
    sizes: list[int]                       # the large message sizes the bandwidth is the median over
    logs: list[str]                        # "file" or "file:line" of each run
    step_latency_s: float | None = None    # median over this group's multi-node logs
    used: bool = True                      # False: measured only inside one node, left out

    def to_json(self) -> dict:
        return {"op": self.op, "nodes": self.nodes, "ranks": self.ranks,
                "bus_bandwidth_bytes_per_s": self.bus_bandwidth_bytes_per_s,
                "bus_bandwidth_gbps": self.bus_bandwidth_bytes_per_s / 1e9, "step_latency_s": self.step_latency_s,
                "large_sizes": self.sizes, "logs": self.logs, "used": self.used}


@dataclass
class ScalingFit:
    groups: list[GroupFit]
    step_latency_s: float
    latency_logs: list[tuple[str, float]]  # (log, its step latency) for every multi-node log
    gpu: str | None
    ranks_per_node: int
    files: list[str]
    warnings: list[str] = field(default_factory=list)

    def bus_bandwidth(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for g in self.groups:
            if g.used:
                out.setdefault(g.op, {})[g.nodes] = g.bus_bandwidth_bytes_per_s
        return out

    def scaling_yaml(self) -> dict:
        """``scale_out.scaling`` as it goes in a spec file: quantities as text with units."""
        return {"step_latency": f"{_num(self.step_latency_s * 1e6)} us",
                "bus_bandwidth": {op: {n: f"{_num(bw / 1e9)} GB/s" for n, bw in sorted(t.items())}
                                  for op, t in self.bus_bandwidth().items()}}

    def to_json(self) -> dict:
        return {"gpu": self.gpu, "ranks_per_node": self.ranks_per_node, "step_latency_s": self.step_latency_s,
                "step_latency_by_log": [{"log": f, "step_latency_s": s} for f, s in self.latency_logs],
                "table": [g.to_json() for g in self.groups], "scaling": self.scaling_yaml(), "files": self.files,
                "warnings": self.warnings}


def _num(x: float) -> str:
    s = f"{x:.4g}"
    return f"{x:.0f}" if "e" in s else s


def _name(log: NcclTestsLog, several: bool) -> str:
    return f"{log.file}:{log.line}" if several else log.file


def fit_scaling(logs: list[NcclTestsLog]) -> ScalingFit:
    """Bus bandwidth per collective and node count, and the step latency (module docstring)."""
    if not logs:
        raise InputError("no nccl-tests logs given", field="nccl-tests")
    per_file: dict[str, int] = {}
    for log in logs:
        per_file[log.file] = per_file.get(log.file, 0) + 1
    name = {id(log): _name(log, per_file[log.file] > 1) for log in logs}
    warnings: list[str] = []

    for log in logs:
        if len(set(log.ranks_per_host)) > 1:
            spread = ", ".join(f"{h}: {n}" for h, n in zip(log.hosts, log.ranks_per_host))
            raise InputError(f"the ranks are spread unevenly over the hosts ({spread}); a node spec has one number of "
                             "devices per node", file=name[id(log)], field="nccl-tests")
    first = logs[0]
    for log in logs[1:]:
        if log.ranks_per_node != first.ranks_per_node:
            raise InputError(f"{log.ranks_per_node} ranks per node, but {name[id(first)]} has {first.ranks_per_node}; "
                             "fit logs of one node layout at a time", file=name[id(log)], field="nccl-tests")
    gpus = {log.gpu for log in logs if log.gpu}
    if len(gpus) > 1:
        raise InputError(f"the logs come from different GPUs ({', '.join(sorted(gpus))}); fit one kind at a time",
                         field="nccl-tests")

    groups: dict[tuple[str, int], list[NcclTestsLog]] = {}
    for log in logs:
        groups.setdefault((log.op, log.nodes), []).append(log)
        bad = sum(1 for r in log.rows if r.wrong)
        if bad:
            warnings.append(f"{name[id(log)]}: {bad} row(s) report wrong values (#wrong > 0); their timings are used")

    fits: dict[tuple[str, int], GroupFit] = {}
    for (op, nodes), members in sorted(groups.items()):
        rows = [r for log in members for r in log.rows if r.busbw_gbps > 0]
        sizes = sorted({r.size for r in rows})[-LARGE_SIZES:]
        if not sizes:
            raise InputError(f"{op} over {nodes} node(s): every row reports a bus bandwidth of 0",
                             file=name[id(members[0])], field="nccl-tests")
        bw = statistics.median(r.busbw_gbps for r in rows if r.size in sizes) * 1e9
        if sizes[-1] < PLATEAU_BYTES:
            warnings.append(f"{op} over {nodes} node(s): the largest message is {sizes[-1]} bytes; the bus bandwidth may "
                            "not have levelled off yet (run up to -e 1G or more)")
        fits[(op, nodes)] = GroupFit(op=op, nodes=nodes, ranks=members[0].ranks, bus_bandwidth_bytes_per_s=bw,
                                     sizes=sizes, logs=[name[id(log)] for log in members])

    latency_logs: list[tuple[str, float]] = []
    for (op, nodes), members in sorted(groups.items()):
        if nodes < 2:
            continue
        g = fits[(op, nodes)]
        per_group = []
        for log in members:
            lat = _log_step_latency(log, g.bus_bandwidth_bytes_per_s)
            latency_logs.append((name[id(log)], lat))
            per_group.append(lat)
            if min(r.size for r in log.rows) > SMALL_BYTES:
                warnings.append(f"{name[id(log)]}: the smallest message is {min(r.size for r in log.rows)} bytes; the "
                                "step latency is best read from a run that starts at a few bytes (-b 8)")
        g.step_latency_s = statistics.median(per_group)
    if not latency_logs:
        raise InputError("no log spans several nodes (every '#  Rank' line of each log is on one host): the bus "
                         "bandwidth between nodes and the step latency need a multi-node run", field="nccl-tests")

    ops_multi = {op for (op, nodes) in fits if nodes > 1}
    for (op, nodes), g in fits.items():
        if op not in ops_multi:
            g.used = False
    for op in sorted({op for op, _ in fits} - ops_multi):
        warnings.append(f"{op}: measured only inside one node, left out of the table (it falls back to another "
                        "collective's table or to the NIC line rate)")
    for op in sorted(ops_multi):
        if sum(1 for (o, _) in fits if o == op) == 1:
            n = next(n for (o, n) in fits if o == op)
            warnings.append(f"{op}: measured at {n} nodes only, so its bus bandwidth is taken as the same at every "
                            "node count")

    return ScalingFit(groups=[fits[k] for k in sorted(fits)], step_latency_s=statistics.median(s for _, s in latency_logs),
                      latency_logs=latency_logs, gpu=gpus.pop() if gpus else None,
                      ranks_per_node=first.ranks_per_node, files=list(dict.fromkeys(log.file for log in logs)),
                      warnings=warnings)


def _log_step_latency(log: NcclTestsLog, bus_bandwidth: float) -> float:
    """One multi-node log's step latency: the median over its smallest sizes (module docstring)."""
    steps = ring_steps(log.op, log.ranks)
    factor = 1.0 if log.op == "send_recv" else bus_factor(log.op, log.ranks)
    sizes = sorted({r.size for r in log.rows})[:SMALL_SIZES]
    est = [max(0.0, (r.time_us * 1e-6 - factor * r.size / bus_bandwidth) / steps) for r in log.rows if r.size in sizes]
    return statistics.median(est)


# ------------------------------------------------------------------------------------ the node spec

def _tokens(text: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", text.lower())) - {""}


def device_matches(spec_id: str, gpu_name: str) -> bool:
    """Whether the accelerator spec ``spec_id`` (h100-sxm, a100-80gb-pcie, mi300x, ...) is the GPU a
    log names (CUDA's device name: 'NVIDIA H100 80GB HBM3', 'NVIDIA A100-SXM4-40GB',
    'NVIDIA A100 80GB PCIe'): the chip is named, PCIe or not agrees, and so does the memory size
    where both give one."""
    ids = [t for t in re.split(r"[^a-z0-9]+", spec_id.lower()) if t]
    gpu = _tokens(gpu_name)
    chip = next((t for t in ids if re.search(r"\d", t) and not re.fullmatch(r"\d+gb", t)), None)
    if chip is None or chip not in gpu:
        return False
    if ("pcie" in ids) != ("pcie" in gpu):
        return False
    mem_id = {t for t in ids if re.fullmatch(r"\d+gb", t)}
    mem_gpu = {t for t in gpu if re.fullmatch(r"\d+gb", t)}
    return not (mem_id and mem_gpu and not (mem_id & mem_gpu))


def choose_base_node(lib, fit: ScalingFit, node_id: str | None = None):
    """The node spec to copy: ``node_id`` when given, else the one node whose device is the logs'
    GPU and whose devices_per_node is the logs' ranks per node. Returns (spec, warnings)."""
    from .specs import NodeSpec

    if node_id:
        spec = lib.get(node_id)
        if not isinstance(spec, NodeSpec):
            raise InputError(f"{node_id!r} is a {spec.kind} spec, not a node", field="node")
        notes = []
        if spec.devices_per_node != fit.ranks_per_node:
            notes.append(f"{node_id} has {spec.devices_per_node} devices per node but the logs put {fit.ranks_per_node} "
                         "ranks on each node")
        if fit.gpu and not device_matches(spec.device, fit.gpu):
            notes.append(f"{node_id}'s device is {spec.device}, the logs ran on {fit.gpu}")
        return spec, notes
    if not fit.gpu:
        raise InputError("the logs do not name their GPU on the '#  Rank' lines; name the node spec to copy with --node",
                         field="node")
    found = [s for s in (lib.specs[i] for i in lib.ids()) if isinstance(s, NodeSpec)
             and s.devices_per_node == fit.ranks_per_node and device_matches(s.device, fit.gpu)]
    if len(found) > 1:
        # the GPU maker's reference system (DGX for NVIDIA) over a site's own servers with the same
        # GPUs (e.g. meta-h100-roce), which are picked by name only
        ref = [s for s in found if getattr(s, "vendor", None) == getattr(lib.specs.get(s.device), "vendor", None)]
        found = ref if len(ref) == 1 else found
    if len(found) == 1:
        return found[0], []
    if not found:
        raise InputError(f"no node spec has {fit.ranks_per_node} x {fit.gpu}; name the one to copy with --node "
                         "(`costmodel hardware list`), or add one with --hardware-file", field="node")
    raise InputError(f"several node specs have {fit.ranks_per_node} x {fit.gpu} ({', '.join(s.id for s in found)}); "
                     "pick one with --node", field="node")


def measured_node(base_raw: dict, fit: ScalingFit, *, new_id: str, base_id: str, out: str | Path = "<out>") -> dict:
    """A copy of the base node's YAML mapping with id ``new_id`` and the fitted
    ``scale_out.scaling``; validated as a spec (InputError otherwise)."""
    from .specs import parse_spec

    data = copy.deepcopy(base_raw)
    if not isinstance(data.get("scale_out"), dict):
        raise InputError(f"node {base_id!r} has no scale_out network to attach the scaling to; pick another with --node",
                         field="node")
    data["id"] = new_id
    data["name"] = f"{data.get('name', base_id)} (scale-out measured)"
    data["scale_out"]["scaling"] = fit.scaling_yaml()
    sources = dict(data.get("sources") or {})
    logs = ", ".join(Path(f).name for f in fit.files)
    fitted = (f"scaling fitted by `costmodel calibrate --nccl-tests` from nccl-tests logs: {logs} "
              f"({fit.ranks_per_node} x {fit.gpu or 'GPU'} per node)")
    sources["scale_out"] = f"{sources['scale_out']}; {fitted}" if sources.get("scale_out") else fitted
    data["sources"] = sources
    parse_spec(data, out)  # raises InputError (e.g. a bad --id)
    return data


def check_node_out(path: str | Path, **kw) -> Path:
    """Raise InputError unless a node spec may be written at ``path`` (costmodel.outputs.check_output:
    never inside the shipped hardware/ directory, never over a file that is not a node spec).
    ``kw``: check_output's ``inputs``, ``others`` and ``flag``."""
    from .outputs import check_output

    return check_output(path, "node", **kw)


def write_node(data: dict, path: str | Path, *, header: str = "", **kw) -> Path:
    """Write the node spec atomically (temp file in the same directory, then os.replace), after
    check_node_out."""
    import yaml

    from .outputs import write_atomic

    path = check_node_out(path, **kw)
    head = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    text = head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False, width=120)
    return write_atomic(path, text)
