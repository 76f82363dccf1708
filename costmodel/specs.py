"""Hardware specs: YAML files validated into typed pydantic models.

A spec is one of
- ``AcceleratorSpec`` (kind ``gpu`` or ``tpu``): one rank as a framework sees it. For multi-die
  packages (MI250X: 2 GCDs) every figure is per die, and ``dies_per_package`` says how many
  dies one package holds.
- ``CpuSpec`` (kind ``cpu``): a server CPU socket.
- ``NvmeSpec`` (kind ``nvme``): one NVMe drive.
- ``NodeSpec`` (kind ``node``): devices per node, host CPUs, DRAM, NVMe, the scale-up domain and
  the scale-out network. Clusters and pod slices are nodes whose scale-up domain spans more
  devices than one host holds (TPU ICI).

A shipped spec (``hardware/``) carries ``sources``: a map from the top-level field it backs to a
citation (URL or paper), one for every figure. A user's spec (``--hardware-file``,
``COSTMODEL_HARDWARE_PATH``) loads without them and is marked unsourced (``unsourced()`` lists the
figures without a citation). All quantities are strings with units in YAML and base SI units in
Python. A file with several problems reports them all at once.
Files are read with costmodel.inputs (PyYAML's safe loader, duplicate keys refused) only.
"""
from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError, field_validator, model_validator

from .errors import InputError, from_validation_error
from .inputs import file_key, once_per_look
from .units import Bytes, BytesPerSec, FlopsPerSec, Seconds, Watts

DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "fp4")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MemorySpec(_Strict):
    capacity_bytes: Bytes = Field(alias="capacity")
    bandwidth_bytes_per_s: BytesPerSec = Field(alias="bandwidth")
    type: str | None = None  # HBM3, DDR5, ...

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FlopsTable(_Strict):
    """Peak FLOP/s (OP/s for integers) per dtype; a dtype the chip lacks is left out."""

    fp64: FlopsPerSec | None = None
    fp32: FlopsPerSec | None = None
    tf32: FlopsPerSec | None = None
    bf16: FlopsPerSec | None = None
    fp16: FlopsPerSec | None = None
    fp8: FlopsPerSec | None = None
    int8: FlopsPerSec | None = None
    int4: FlopsPerSec | None = None
    fp4: FlopsPerSec | None = None

    def get(self, dtype: str) -> float | None:
        if dtype not in DTYPES:
            raise InputError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        return getattr(self, dtype)


class LinkSpec(_Strict):
    """A scale-up link (NVLink, Infinity Fabric, ICI): bandwidth per device, per direction."""

    name: str
    bandwidth_bytes_per_s: BytesPerSec = Field(alias="bandwidth")
    topology: Literal["switch", "full-mesh", "ring", "torus-2d", "torus-3d", "none"] = "switch"
    latency_s: Seconds = Field(default=2e-6, alias="latency")
    links: int | None = Field(default=None, ge=1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class HostLinkSpec(_Strict):
    """Host link (PCIe): ``bandwidth`` per direction."""

    name: str
    gen: int | None = Field(default=None, ge=1, le=7)
    lanes: int | None = Field(default=None, ge=1, le=32)
    bandwidth_bytes_per_s: BytesPerSec = Field(alias="bandwidth")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _SpecBase(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    name: str
    vendor: str
    sources: dict[str, str] = Field(default_factory=dict)
    price_per_hour_usd: float | None = Field(default=None, gt=0)
    notes: str | None = None
    # the file the spec was read from (None: built in Python); not a field of the spec
    _file: Path | None = PrivateAttr(default=None)

    @property
    def file(self) -> Path | None:
        return self._file

    @model_validator(mode="after")
    def _cited(self, info):
        # shipped specs cite every figure; a user's own file need not (it is marked unsourced)
        if (info.context or {}).get("require_sources"):
            missing = self.unsourced()
            if missing:
                keys = ", ".join(f"'{k}'" for k in missing)
                raise ValueError(f"{keys} {'has' if len(missing) == 1 else 'have'} no entry in 'sources' "
                                 "(a shipped spec cites a datasheet or paper for every figure)")
        return self

    def _cite_fields(self) -> tuple[str, ...]:
        return ()

    def unsourced(self) -> list[str]:
        """The figures (as named in YAML) that have no entry in ``sources``."""
        cited = set(self.sources)
        aliases = {name: (f.alias or name) for name, f in type(self).model_fields.items()}
        out = []
        for field in self._cite_fields():
            key = aliases.get(field, field)
            if getattr(self, field, None) is not None and not ({key, field, "all"} & cited):
                out.append(key)
        return out


class AcceleratorSpec(_SpecBase):
    kind: Literal["gpu", "tpu"]
    memory: MemorySpec
    peak_flops: FlopsTable
    sparse_flops: FlopsTable | None = None
    scale_up: LinkSpec | None = None
    host_link: HostLinkSpec | None = None
    tdp_w: Watts = Field(alias="tdp")
    dies_per_package: int = Field(default=1, ge=1)
    # Streaming multiprocessors (NVIDIA) / compute units (AMD) of the package: GEMM output tiles run
    # in waves of this many (wave quantisation in the default GEMM curve). None: not modelled.
    compute_units: int | None = Field(default=None, ge=1)
    # Fraction of the dense peak that large matmuls sustain on this device, from a published
    # measurement (cited in sources): replaces the H100-measured plateau of the datasheet-default
    # GEMM curve (roofline._DefaultEfficiency). None: that plateau. A calibration overlay replaces both.
    gemm_efficiency: float | None = Field(default=None, ge=0.2, le=1.0)
    # Calibration (efficiency) overlays are applied on top; see costmodel/calibration/.

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def _cite_fields(self):
        return ("memory", "peak_flops", "scale_up", "host_link", "tdp_w", "gemm_efficiency")

    @field_validator("sparse_flops")
    @classmethod
    def _sparse_not_below_dense(cls, v, info):
        dense = info.data.get("peak_flops")
        for dt in DTYPES if (v is not None and dense is not None) else ():
            s, d = getattr(v, dt), getattr(dense, dt)
            if s is not None and d is not None and s < d:
                raise ValueError(f"{dt} sparse peak {s:.4g} is below the dense peak {d:.4g} in peak_flops; "
                                 "dense figures go in peak_flops, 2:4-sparse ones in sparse_flops")
        return v

    @field_validator("peak_flops")
    @classmethod
    def _has_matmul_dtype(cls, v):
        if v.bf16 is None and v.fp16 is None and v.fp32 is None:
            raise ValueError("peak_flops needs at least one of bf16, fp16, fp32")
        return v

    def peak(self, dtype: str) -> float:
        v = self.peak_flops.get(dtype)
        if v is None:
            raise InputError(f"{self.id} has no {dtype} peak in its spec", field="peak_flops")
        return v


class CpuSpec(_SpecBase):
    kind: Literal["cpu"]
    cores: int = Field(ge=1)
    threads: int | None = Field(default=None, ge=1)
    base_clock_ghz: float | None = Field(default=None, gt=0)
    memory: MemorySpec  # DRAM per socket (capacity = maximum supported)
    peak_flops: FlopsTable
    isa: list[str] = Field(default_factory=list)  # e.g. avx512, amx
    tdp_w: Watts = Field(alias="tdp")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def _cite_fields(self):
        return ("memory", "peak_flops", "tdp_w")

    # A CPU as the device of a training or inference estimate (costmodel.training / inference): the
    # fields an accelerator has that a CPU socket does not, empty; ``memory`` is its DRAM.
    sparse_flops: ClassVar[None] = None
    scale_up: ClassVar[None] = None
    host_link: ClassVar[None] = None
    dies_per_package: ClassVar[int] = 1
    compute_units: ClassVar[None] = None
    gemm_efficiency: ClassVar[None] = None

    def peak(self, dtype: str) -> float:
        v = self.peak_flops.get(dtype)
        if v is None:
            raise InputError(f"{self.id} has no {dtype} peak in its spec", field="peak_flops")
        return v

    @field_validator("threads")
    @classmethod
    def _threads_not_below_cores(cls, v, info):
        cores = info.data.get("cores")
        if v is not None and cores is not None and v < cores:
            raise ValueError(f"{v} threads is fewer than the {cores} cores")
        return v


class NvmeSpec(_SpecBase):
    kind: Literal["nvme"]
    capacity_bytes: Bytes = Field(alias="capacity")
    read_bytes_per_s: BytesPerSec = Field(alias="read_bandwidth")
    write_bytes_per_s: BytesPerSec = Field(alias="write_bandwidth")
    interface: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def _cite_fields(self):
        return ("capacity_bytes", "read_bytes_per_s", "write_bytes_per_s")


class ScaleUpDomain(_Strict):
    """Devices joined by the scale-up fabric; ``size`` may exceed one host (TPU ICI, NVL72)."""

    size: int = Field(ge=1)
    bandwidth_bytes_per_s: BytesPerSec = Field(alias="bandwidth")  # per device, per direction
    latency_s: Seconds = Field(default=2e-6, alias="latency")
    topology: Literal["switch", "full-mesh", "ring", "torus-2d", "torus-3d", "none"] = "switch"
    # a torus's sides (e.g. [16, 16, 12]); their product is ``size``. Default: the most cubic split.
    shape: list[Annotated[int, Field(ge=1)]] | None = None
    # Multi-die packages (MI250X: 2 GCDs): the bandwidth between the dies of one package, per die
    # per direction; ``bandwidth`` is then what a group spanning packages gets (its slowest hop).
    package_bandwidth_bytes_per_s: BytesPerSec | None = Field(default=None, alias="package_bandwidth")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _shape_is_size(self):
        if self.shape is not None:
            prod = 1
            for d in self.shape:
                prod *= d
            if prod != self.size:
                raise ValueError(f"shape {self.shape} holds {prod} devices, not size {self.size}")
            if not self.topology.startswith("torus"):
                raise ValueError(f"shape is for torus topologies, not {self.topology!r}")
        return self


class PipelineStall(_Strict):
    """Runs on a congested cluster whose pipeline sends across nodes stall (costmodel.cluster.
    pipeline_stall_probability): on such a run every cross-node pipeline send or receive costs
    ``seconds_per_op`` more, and a run spanning ``nodes`` nodes stalls with probability
    base_rate + (1 - base_rate) / (1 + (onset_nodes / nodes) ^ onset_width)."""

    seconds_per_op_s: Seconds = Field(alias="seconds_per_op")
    base_rate: float = Field(ge=0.0, lt=1.0)
    onset_nodes: float = Field(gt=0.0)
    onset_width: float = Field(gt=0.0, le=50.0)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ScaleOutScaling(_Strict):
    """How the scale-out network's collectives behave as a group spans more nodes, as measured
    (costmodel.cluster): ``bus_bandwidth`` per collective (all_reduce, all_gather, reduce_scatter,
    all_to_all, send_recv) maps a node count to the large-message nccl-tests bus bandwidth there;
    ``step_latency`` is the time of one ring step that crosses the network."""

    step_latency_s: Seconds = Field(alias="step_latency")
    bus_bandwidth: dict[Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv"],
                        dict[Annotated[int, Field(ge=1)], BytesPerSec]]
    pipeline_stall: PipelineStall | None = None  # stalls of cross-node pipeline sends, as measured

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ScaleOutNetwork(_Strict):
    name: str
    bandwidth_per_device_bytes_per_s: BytesPerSec = Field(alias="bandwidth_per_device")
    latency_s: Seconds = Field(default=5e-6, alias="latency")
    # A two-tier fat tree: groups over more than ``nodes_per_leaf`` nodes cross the spine, whose
    # uplinks carry 1 / ``oversubscription`` of the leaf's downlink bandwidth (1: non-blocking).
    nodes_per_leaf: int | None = Field(default=None, ge=1)
    oversubscription: float = Field(default=1.0, ge=1.0)
    scaling: ScaleOutScaling | None = None  # measured behaviour at scale (costmodel.cluster)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NodeSpec(_SpecBase):
    kind: Literal["node"]
    device: str  # an AcceleratorSpec id
    devices_per_node: int = Field(ge=1)
    host_cpu: str | None = None  # a CpuSpec id
    host_cpus: int = Field(default=0, ge=0)
    dram_bytes: Bytes | None = Field(default=None, alias="dram")
    nvme: str | None = None  # an NvmeSpec id
    nvme_drives: int = Field(default=0, ge=0)
    scale_up: ScaleUpDomain
    scale_out: ScaleOutNetwork | None = None
    power_w: Watts | None = Field(default=None, alias="power")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def _cite_fields(self):
        return ("devices_per_node", "scale_up", "scale_out")

    @field_validator("scale_up")
    @classmethod
    def _domain_fits_node(cls, v, info):
        per_node = info.data.get("devices_per_node")
        if per_node and v.size % per_node and per_node % v.size:
            raise ValueError(f"size {v.size} is neither a multiple nor a divisor of devices_per_node ({per_node})")
        return v


Spec = Annotated[Union[AcceleratorSpec, CpuSpec, NvmeSpec, NodeSpec], Field(discriminator="kind")]
_SPEC_ADAPTER = TypeAdapter(Spec)


# ---------------------------------------------------------------------------------- loading

def package_data_dir(name: str) -> Path:
    """Directory of shipped YAML: inside the wheel (costmodel/_data/NAME) or the checkout root
    (found once per process)."""
    found = _DATA_DIRS.get(name)
    if found is None:
        here = Path(__file__).resolve().parent
        shipped = here / "_data" / name
        found = _DATA_DIRS[name] = shipped if shipped.is_dir() else here.parent / name
    return found


_DATA_DIRS: dict[str, Path] = {}


def read_yaml(path: str | Path) -> object:
    """A YAML file's data, read through costmodel.inputs (size limit, UTF-8, duplicate keys and
    non-finite numbers refused; every problem one InputError naming the file)."""
    from .inputs import load_yaml

    return load_yaml(path)


def parse_spec(data: object, file: str | Path = "<spec>", require_sources: bool = False
               ) -> AcceleratorSpec | CpuSpec | NvmeSpec | NodeSpec:
    """Validate one spec mapping. ``require_sources``: every figure must cite a source (shipped
    specs). Every invalid or missing field is reported in one InputError (the first names the
    field attribute)."""
    if not isinstance(data, dict):
        raise InputError("expected a mapping of spec fields at the top level", file=file)
    if "kind" not in data:
        raise InputError("missing required field; expected one of gpu, tpu, cpu, nvme, node", file=file, field="kind")
    if data["kind"] not in ("gpu", "tpu", "cpu", "nvme", "node"):
        raise InputError(f"unknown kind {data['kind']!r}; expected one of gpu, tpu, cpu, nvme, node", file=file, field="kind")
    try:
        # Quantities in files must carry their unit (a bare 80 could be GB, GiB or bytes).
        return _SPEC_ADAPTER.validate_python(data, context={"units_required": True, "require_sources": require_sources})
    except ValidationError as exc:
        # Drop the discriminator tag pydantic puts first in the location ("gpu.memory" -> "memory").
        raise from_validation_error(exc, file, drop_first=("gpu", "tpu", "cpu", "nvme", "node")) from None


def is_shipped(path: str | Path) -> bool:
    """A spec file shipped with costmodel (under its ``hardware/`` directory)."""
    try:
        Path(path).resolve().relative_to(_shipped_root())
        return True
    except ValueError:
        return False


def _shipped_root() -> Path:
    root = _DATA_DIRS.get("hardware/resolved")
    if root is None:
        root = _DATA_DIRS["hardware/resolved"] = package_data_dir("hardware").resolve()
    return root


def load_spec_file(path: str | Path):
    """Parse one spec file. Specs are frozen, so a file already parsed and unchanged (same
    modification time and size) is returned from a cache: a layout search or a plan check loads
    the library many times."""
    from .inputs import cached_by_file

    path = Path(path)
    return cached_by_file("spec", path, lambda: _parse_spec_file(path))


def _parse_spec_file(path: Path):
    spec = parse_spec(read_yaml(path), path, require_sources=is_shipped(path))
    spec._file = path
    return spec


def _same_path(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _display(path: Path) -> str:
    """A shipped spec as ``the shipped hardware/<file>``; any other file as given."""
    try:
        rel = Path(path).resolve().relative_to(_shipped_root())
        return f"the shipped hardware/{rel.as_posix()}"
    except ValueError:
        return str(path)


# Where a replaced spec is reported: each message once per command. A result that carries it in its
# own notes (plan.train, plan.infer) claims it; the CLI prints the rest on stderr when the command
# ends (cli.app.main). The Python API also finds the lines in HardwareLibrary.notes / .replaced.
_NOTED: set[str] = set()
_PENDING: list[str] = []


def _note(message: str) -> None:
    if message not in _NOTED:
        _NOTED.add(message)
        _PENDING.append(message)


def reset_notes() -> None:
    _NOTED.clear()
    _PENDING.clear()


def claim_notes(messages) -> None:
    """``messages`` are reported with a result: not printed again."""
    for m in messages:
        if m in _PENDING:
            _PENDING.remove(m)


def pending_notes() -> list[str]:
    """The notes not yet reported (and forget them)."""
    out = list(_PENDING)
    _PENDING.clear()
    return out


# ------------------------------------------------------------------ shipped specs, parsed when used

# A command needs one or two of the shipped specs: each is parsed (and checked) the first time it is
# asked for. What a library must know of every spec before that (its id, kind, and a node's device,
# host_cpu and nvme, for HardwareLibrary.check_references) is read from the file's top-level lines;
# a file whose fields are not plain one-line values there is parsed at once instead.
# tests/test_specs.py holds the lines read against the parsed spec of every shipped file.
_INDEX_LINE = re.compile(r"^(id|kind|device|host_cpu|nvme):[ \t]*([A-Za-z][A-Za-z0-9._-]*)[ \t]*(?:#.*)?$", re.M)
_INDEX_KEY = re.compile(r"^(id|kind|device|host_cpu|nvme)[ \t]*:", re.M)
_YAML_WORDS = {"null", "true", "false", "yes", "no", "on", "off"}  # plain scalars YAML does not read as text
_KINDS = ("gpu", "tpu", "cpu", "nvme", "node")


class _Unparsed:
    """A shipped spec file not parsed yet: its id, kind and references, and the spec once parsed."""

    __slots__ = ("path", "id", "kind", "refs", "spec")

    def __init__(self, path: Path, fields: dict):
        self.path, self.id, self.kind = path, fields["id"], fields["kind"]
        self.refs = {k: fields.get(k) for k in ("device", "host_cpu", "nvme")}
        self.spec = None

    def load(self):
        if self.spec is None:
            spec = load_spec_file(self.path)
            if spec.id != self.id or spec.kind != self.kind:  # (not for a file the index reads right)
                raise InputError(f"id and kind read as {self.id!r}, {self.kind!r} but parse as {spec.id!r}, {spec.kind!r}",
                                 file=self.path, field="id")
            self.spec = spec
        return self.spec


_UNPARSED: dict = {}  # shipped file -> its _Unparsed, once per process (as the directory's scan)


def _unparsed(path: Path) -> _Unparsed | None:
    """The index entry of a shipped spec file, or None where its top-level lines do not say it plainly."""
    hit = _UNPARSED.get(path)
    if hit is None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeError):
            return None
        found = dict(_INDEX_LINE.findall(text))
        if (len(_INDEX_KEY.findall(text)) != len(found) or len(_INDEX_LINE.findall(text)) != len(found)
                or "id" not in found or found.get("kind") not in _KINDS
                or any(v.lower() in _YAML_WORDS for v in found.values())):
            return None
        hit = _UNPARSED[path] = _Unparsed(path, found)
    return hit


class _SpecTable(MutableMapping):
    """HardwareLibrary.specs: id -> spec, a shipped spec parsed the first time it is read."""

    __slots__ = ("_d",)

    def __init__(self, items=()):
        self._d = dict(items)

    def __getitem__(self, spec_id):
        v = self._d[spec_id]
        if type(v) is _Unparsed:
            v = self._d[spec_id] = v.load()
        return v

    def __setitem__(self, spec_id, spec):
        self._d[spec_id] = spec

    def __delitem__(self, spec_id):
        del self._d[spec_id]

    def __iter__(self):
        return iter(self._d)

    def __len__(self):
        return len(self._d)

    def __contains__(self, spec_id):
        return spec_id in self._d

    def __repr__(self):
        return f"_SpecTable({sorted(self._d)})"

    def copy(self) -> "_SpecTable":
        return _SpecTable(self._d)

    def kind(self, spec_id: str) -> str:
        """A spec's kind, without parsing it."""
        return self._d[spec_id].kind

    def refs(self, spec_id: str) -> dict:
        """A node's device, host_cpu and nvme ids, without parsing it."""
        v = self._d[spec_id]
        if type(v) is _Unparsed:
            return dict(v.refs)
        return {k: getattr(v, k, None) for k in ("device", "host_cpu", "nvme")}


def _search_dirs(extra: list[str | Path] | None = None) -> list[Path]:
    dirs = [package_data_dir("hardware")]
    env = os.environ.get("COSTMODEL_HARDWARE_PATH", "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in (extra or [])]
    return dirs


class HardwareLibrary:
    """All specs visible: shipped ones, ``COSTMODEL_HARDWARE_PATH`` entries (directories, or spec
    files), extra files.

    Later sources override earlier ones with the same id, so a user file can replace a shipped
    spec without editing it; ``replaced`` records each such replacement (id -> (the file used, the
    file it replaces)) and it is reported (``notes``; the CLI prints it, :func:`pending_notes`). Two files with one id
    in the same source (one directory, or the extra files) are an InputError naming both.
    """

    def __init__(self, extra_files: list[str | Path] | None = None, extra_dirs: list[str | Path] | None = None):
        self.specs: MutableMapping[str, AcceleratorSpec | CpuSpec | NvmeSpec | NodeSpec] = _SpecTable()
        self.files: dict[str, Path] = {}
        self.replaced: dict[str, tuple[Path, Path]] = {}
        shipped = package_data_dir("hardware")
        for d in _search_dirs(extra_dirs):
            if not d.exists():
                if d != shipped:
                    raise InputError("hardware directory does not exist (COSTMODEL_HARDWARE_PATH)", file=d)
                continue
            if d.is_file():  # a spec file named where a directory is expected: read it, never ignore it
                if d.suffix not in (".yaml", ".yml"):
                    raise InputError("is a file, not a directory of specs or a .yaml spec (COSTMODEL_HARDWARE_PATH)", file=d)
                files = [d]
            else:
                files = _spec_files(d, shipped=d == shipped)
            self._add_group(files, lazy=d == shipped)
        self._add_group([Path(f) for f in extra_files or []])

    def copy(self) -> "HardwareLibrary":
        """A library with the same specs whose tables a caller may change (the specs are frozen)."""
        new = object.__new__(HardwareLibrary)
        new.specs, new.files, new.replaced = self.specs.copy(), dict(self.files), dict(self.replaced)
        new.__dict__["_origin"] = self.origin
        return new

    @property
    def origin(self) -> "HardwareLibrary":
        """The library this one was copied from (itself if none): one per version of the spec files."""
        return self.__dict__.get("_origin", self)

    def _add_group(self, files: list[Path], lazy: bool = False) -> None:
        """Add the specs of one source; one id twice in it is an error. ``lazy`` (the shipped
        directory): each file parsed when its spec is first asked for (_Unparsed)."""
        seen: dict[str, Path] = {}
        for f in files:
            spec = (_unparsed(f) if lazy else None) or load_spec_file(f)
            first = seen.get(spec.id)
            if first is not None and not _same_path(first, f):
                raise InputError(f"defines id {spec.id!r}, as {first} does: one of them must go (or take another id)",
                                 file=f, field="id")
            seen[spec.id] = f
            self._add(f, spec)

    def _add(self, path: Path, spec=None):
        spec = spec if spec is not None else load_spec_file(path)
        old = self.files.get(spec.id)
        if old is not None and not _same_path(old, path):
            self.replaced[spec.id] = (path, self.replaced.get(spec.id, (None, old))[1])
            line = f"hardware {spec.id!r}: the spec in {path} replaces {_display(self.replaced[spec.id][1])}"
            self.__dict__.setdefault("_noted", []).append(line)
            _note(line)
        self.specs[spec.id] = spec  # (an _Unparsed one: parsed when read)
        self.files[spec.id] = path

    def notes(self, *ids: str) -> list[str]:
        """A line for each of ``ids`` (and a node's device) whose spec replaces another file's."""
        if not self.replaced:  # (the lines come from replacements only)
            return []
        out, todo = [], list(ids)
        while todo:
            i = todo.pop(0)
            if i in self.specs and self.specs.kind(i) == "node":
                todo.append(self.specs.refs(i)["device"])
            if i in self.replaced:
                new, old = self.replaced[i]
                line = f"hardware {i!r}: the spec in {new} replaces {_display(old)}"
                if line not in out:
                    out.append(line)
        return out

    def ids(self) -> list[str]:
        return sorted(self.specs)

    def get(self, spec_id: str):
        try:
            return self.specs[spec_id]
        except KeyError:
            from .arch import did_you_mean

            close = did_you_mean(spec_id, self.ids())
            similar = [i for i in self.ids() if spec_id.split("-")[0] in i and i not in close][:6]
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            hint += f"; similar: {', '.join(similar)}" if similar else ("" if close else "; run `costmodel hardware list`")
            raise InputError(f"unknown hardware id {spec_id!r}{hint}", field="hardware") from None

    def device(self, spec_id: str) -> AcceleratorSpec | CpuSpec:
        """The device a spec id names: an accelerator, a node's accelerator, or a CPU (which runs
        training and inference itself; its ``memory`` is the DRAM)."""
        spec = self.get(spec_id)
        if isinstance(spec, NodeSpec):
            return self.device(spec.device)
        if not isinstance(spec, (AcceleratorSpec, CpuSpec)):
            raise InputError(f"{spec_id!r} is a {spec.kind} spec, not an accelerator", field="hardware")
        return spec

    def node_for(self, spec_id: str) -> NodeSpec | None:
        spec = self.get(spec_id)
        return spec if isinstance(spec, NodeSpec) else None

    def check_references(self):
        """Every node names a device, CPU and NVMe that exist; raise InputError otherwise."""
        specs = self.specs
        for sid in specs:
            if specs.kind(sid) == "node":  # (read without parsing a shipped spec: _SpecTable)
                refs = specs.refs(sid)
                for field, ref, kinds in (("device", refs["device"], ("gpu", "tpu")), ("host_cpu", refs["host_cpu"], ("cpu",)),
                                          ("nvme", refs["nvme"], ("nvme",))):
                    if ref is None:
                        continue
                    if ref not in specs or specs.kind(ref) not in kinds:
                        raise InputError(f"refers to {ref!r}, which is not a known {'/'.join(kinds)} spec", file=self.files[sid], field=field)


def _spec_files(d: Path, shipped: bool) -> list[Path]:
    """The spec files under directory ``d`` (calibration overlays are not specs). The shipped
    directory is scanned once per process; a user's directory again when its entries change."""
    try:
        key = (str(d), shipped or os.stat(d).st_mtime_ns)
    except OSError:
        key = None
    files = _SCANNED.get(key) if key is not None else None
    if files is None:
        files = [f for f in sorted(d.rglob("*.yaml")) + sorted(d.rglob("*.yml"))
                 if "calibrated" not in f.relative_to(d).parts]
        if key is not None and shipped:
            _SCANNED[key] = files
    return files


_SCANNED: dict[tuple, list[Path]] = {}
# Libraries built, by where their specs came from: the shipped directory alone is read once per
# process; user directories and files are checked (stat) on every load and re-read when changed.
_LIBRARIES: dict[tuple, HardwareLibrary] = {}


def _library_key(hardware_files) -> tuple | None:
    env = os.environ.get("COSTMODEL_HARDWARE_PATH", "")
    parts: list = [env]
    for p in [p for p in env.split(os.pathsep) if p]:
        d = Path(p)
        if not d.is_dir():
            return None  # a spec file, or a directory that is not there: read (or refused) every time
        parts.extend(file_key(f) for f in _spec_files(d, shipped=False))
    parts.append("--hardware-file")
    parts.extend(file_key(f) for f in hardware_files or ())
    return None if None in parts else tuple(parts)


def load_library(hardware_files: list[str | Path] | None = None) -> HardwareLibrary:
    """Every spec visible (HardwareLibrary): built once per set of unchanged sources, and a copy
    returned each time (its replacement notes reported again, as a fresh load reports them)."""
    return library_origin(hardware_files).copy()


def library_origin(hardware_files: list[str | Path] | None = None) -> HardwareLibrary:
    """load_library's library itself, not a copy (its ``origin``): for a caller that only reads it
    or compares versions; its replacement notes are reported as load_library reports them."""
    try:
        look = ("library-key", tuple(hardware_files) if hardware_files else None)
        key = once_per_look(look, lambda: _library_key(hardware_files))  # (once per estimate: inputs.one_look)
    except TypeError:  # a list of unhashable items: InputError below, as before
        key = _library_key(hardware_files)
    lib = _LIBRARIES.get(key) if key is not None else None
    if lib is None:
        lib = HardwareLibrary(extra_files=hardware_files)
        lib.check_references()
        if key is not None:
            if len(_LIBRARIES) >= 64:
                _LIBRARIES.clear()
            _LIBRARIES[key] = lib
    else:
        for line in lib.__dict__.get("_noted", ()):
            _note(line)
    return lib
