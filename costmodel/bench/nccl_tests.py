"""Read the standard output of NVIDIA nccl-tests (github.com/NVIDIA/nccl-tests): ``all_reduce_perf``,
``all_gather_perf``, ``reduce_scatter_perf``, ``alltoall_perf`` and ``sendrecv_perf`` (also their
``*_perf_mpi`` and other NAME_SUFFIX builds).

One run of a test prints (rank 0 only; ``src/common.cu``, ``src/util.cu``)::

    # nccl-tests version 2.17.6 nccl-headers=22803 nccl-library=22803     (2.15 and later)
    # Collective test starting: all_reduce_perf                           (2.15 and later)
    # nThread 1 nGpus 1 minBytes 8 maxBytes 8589934592 step: 2(factor) warmup iters: 5 iters: 20 ...
    #
    # Using devices
    #  Rank  0 Group  0 Pid  41213 on  node-001 device  0 [0000:18:00] NVIDIA H100 80GB HBM3
    ...                                                                   (one line per rank)
    #
    #                                                              out-of-place                       in-place
    #       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
    #        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)
               8             2     float     sum      -1    36.94    0.00    0.00      0    35.06    0.00    0.00      0
    ...
    # Out of bounds values : 0 OK
    # Avg bus bandwidth    : 56.4265
    #
    # Collective test concluded: all_reduce_perf                          (2.15 and later)

Older releases print ``#   Rank  0 Pid ... device  0 [0x1b] NAME`` (no Group) and leave the
program name out; with ``-I 1`` every half of a row carries four per-iteration columns more, and
``-C 1`` names the time column ``cputime``. Whatever the layout, the first three numbers after
``root`` are the out-of-place time (us), algbw and busbw (GB/s = 1e9 bytes/s; busbw per
doc/PERFORMANCE.md), which are what is kept.

Each run found in a file becomes one :class:`NcclTestsLog`: the collective (from the program name
in the log -- the ``Collective test starting`` line, else a ``*_perf`` command line echoed before
the run -- else from the file name), the ranks (the distinct ``Rank`` lines), the nodes (distinct
host names on them), the GPU named there and the rows. A file may hold several runs one after
another. Lines labelled by ``srun -l`` (``0: ``) or ``mpirun --tag-output`` (``[1,0]<stdout>:``)
are read through their label. Anything that is not such a log raises
:class:`costmodel.errors.InputError` naming the file (and the line where one is to blame).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

# program name -> collective (costmodel.comm names); the ones scale_out.scaling has a table for
PROGRAMS = {"all_reduce": "all_reduce", "all_gather": "all_gather", "reduce_scatter": "reduce_scatter",
            "alltoall": "all_to_all", "sendrecv": "send_recv"}
# nccl-tests programs whose runs are recognised but not used
OTHER_PROGRAMS = ("broadcast", "reduce", "gather", "scatter", "hypercube", "alltoallv")

_PROGRAM_RE = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(sorted([*PROGRAMS, *OTHER_PROGRAMS], key=len, reverse=True))
                         + r")_perf(?:_[A-Za-z0-9]+)?(?![A-Za-z0-9])")  # all_reduce_perf, all_reduce_perf_mpi (NAME_SUFFIX)
# op names as they appear in file names: all_reduce, allreduce, all-reduce, alltoall, send_recv ...
_FILE_OP_RE = re.compile(r"(?<![a-z])(all[-_]?reduce|all[-_]?gather|reduce[-_]?scatter|all[-_]?to[-_]?all|send[-_]?recv)(?![a-z])")
_LABEL_RE = re.compile(r"^(?:\[\d+,\d+\]<std(?:out|err)>:|\s*\d+:\s)")
_NTHREAD_RE = re.compile(r"^#\s*nThread\s+(\d+)\s+nGpus\s+(\d+)\s+minBytes\s+(\d+)\s+maxBytes\s+(\d+)")
_RANK_RE = re.compile(r"^#\s+Rank\s+(\d+)\s+(?:Group\s+-?\d+\s+)?Pid\s+(\d+)\s+on\s+(\S+)\s+device\s+(\d+)\s+\[[^\]]*\]\s*(.*?)\s*$")
_STARTING_RE = re.compile(r"^#\s*Collective test (?:starting|concluded):\s*(\S+)")
_HEADER_RE = re.compile(r"^#\s*size\s+count\s+type\s+redop\s+root\s+(?:cpu)?time\s+algbw\s+busbw\b")
_ROW_START_RE = re.compile(r"^\s*\d+\s+\d+\s+[A-Za-z]")
_AVG_RE = re.compile(r"^#\s*Avg bus bandwidth\s*:\s*(\S+)")
_VERSION_RE = re.compile(r"^#\s*nccl-tests version\s+(\S+)")


@dataclass(frozen=True)
class Row:
    """One size of a run: out-of-place time (us), algbw and busbw (GB/s, 1e9 bytes/s)."""

    size: int  # bytes, nccl-tests convention (all-gather / reduce-scatter: the whole gathered array)
    count: int
    dtype: str
    redop: str
    time_us: float
    algbw_gbps: float
    busbw_gbps: float
    wrong: int | None = None  # None: validation off (N/A)


@dataclass
class NcclTestsLog:
    """One nccl-tests run read from ``file`` (starting at ``line``)."""

    file: str
    line: int
    op: str = ""                     # all_reduce, all_gather, reduce_scatter, all_to_all, send_recv
    program: str | None = None       # e.g. all_reduce_perf, when the log names it
    ranks: int = 0
    hosts: tuple[str, ...] = ()      # distinct host names, in order of first appearance
    ranks_per_host: tuple[int, ...] = ()
    gpu: str | None = None           # device name on the Rank lines (CUDA's prop.name)
    rows: list[Row] = field(default_factory=list)
    avg_busbw_gbps: float | None = None
    version: str | None = None
    params: dict = field(default_factory=dict)  # nThread, nGpus, minBytes, maxBytes

    @property
    def nodes(self) -> int:
        return len(self.hosts)

    @property
    def ranks_per_node(self) -> int:
        return self.ranks // max(1, self.nodes)


class _Run:
    def __init__(self, line: int):
        self.line = line
        self.programs: list[tuple[str, int]] = []  # (name, line) mentioned before or in the run
        self.starting: str | None = None
        self.ranks: dict[int, tuple[str, str]] = {}  # rank -> (host, gpu)
        self.rows: list[Row] = []
        self.header = False
        self.widths: tuple[int, ...] = ()  # token counts a row may have (from the table header)
        self.avg: float | None = None
        self.version: str | None = None
        self.params: dict = {}


def parse_file(path: str | Path) -> list[NcclTestsLog]:
    """Every run in one nccl-tests log file (module docstring)."""
    from ..inputs import MAX_RECORDS_BYTES, read_bytes

    path = Path(path)
    data = read_bytes(path, MAX_RECORDS_BYTES)  # the shared reader's size limit (a log is at most a few MB)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); expected the text output of an "
                         "nccl-tests program", file=path) from None
    return parse_text(text, path)


def parse_files(paths) -> list[NcclTestsLog]:
    out: list[NcclTestsLog] = []
    for p in paths:
        out.extend(parse_file(p))
    return out


def parse_text(text: str, file: str | Path = "<log>") -> list[NcclTestsLog]:
    """Every run in ``text``, the output of one or more nccl-tests programs (module docstring)."""
    file = str(file)
    runs: list[_Run] = []
    cur: _Run | None = None
    pending: list[tuple[str, int]] = []  # program names seen before the next run starts
    pending_starting: str | None = None
    pending_version: str | None = None

    def new_run(lineno: int) -> _Run:
        nonlocal pending, pending_starting, pending_version
        run = _Run(lineno)
        run.programs, run.starting, run.version = pending, pending_starting, pending_version
        pending, pending_starting, pending_version = [], None, None
        runs.append(run)
        return run

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _LABEL_RE.sub("", raw, count=1).rstrip()
        if not line.strip():
            continue
        m = _STARTING_RE.match(line)
        if m:
            name = m.group(1).rsplit("/", 1)[-1]
            if "concluded" in line and cur is not None:
                cur.starting = cur.starting or name
            else:
                pending_starting = name
            continue
        m = _VERSION_RE.match(line)
        if m:
            pending_version = m.group(1)
            continue
        m = _NTHREAD_RE.match(line)
        if m:
            cur = new_run(lineno)
            cur.params = dict(zip(("nThread", "nGpus", "minBytes", "maxBytes"), map(int, m.groups())))
            continue
        m = _RANK_RE.match(line)
        if m:
            if cur is None or cur.rows or cur.header:
                cur = new_run(lineno)
            rank = int(m.group(1))
            if rank in cur.ranks:
                raise InputError(f"line {lineno}: rank {rank} is listed twice", file=file)
            cur.ranks[rank] = (m.group(3), m.group(5))
            continue
        if _HEADER_RE.match(line):
            if cur is None or cur.rows:
                cur = new_run(lineno)
            cur.header = True
            names = line.lstrip("#").split()
            stamp = names[-1] == "timestamp"  # -Z: a "YYYY-mm-dd HH:MM:SS" column, two tokens
            n = len(names) - stamp
            # a whole row; one cut after its out-of-place half (a run stopped mid-row)
            cur.widths = (n + 2 * stamp, 5 + (n - 5) // 2)
            continue
        m = _AVG_RE.match(line)
        if m and cur is not None:
            try:
                cur.avg = float(m.group(1))
            except ValueError:
                pass
            continue
        if line.lstrip().startswith("#"):
            continue
        if _ROW_START_RE.match(line) and cur is not None and cur.header:
            cur.rows.append(_row(line, lineno, file, cur.widths))
            continue
        for pm in _PROGRAM_RE.finditer(line):
            pending.append((pm.group(0), lineno))

    if not runs:
        raise InputError("not an nccl-tests log: no '# nThread ... nGpus ... minBytes ...' header, '#  Rank ...' lines or "
                         "'#  size  count  type  redop  root  time  algbw  busbw' table", file=file)
    return [_finish(r, file) for r in runs]


def _row(line: str, lineno: int, file: str, widths: tuple[int, ...]) -> Row:
    tok = line.split()
    if len(tok) not in widths:
        raise InputError(f"line {lineno}: a result row of {len(tok)} columns where the table header has {widths[0]}: "
                         f"{line.strip()[:80]!r}", file=file)
    try:
        wrong = None
        if len(tok) > 8 and tok[8] != "N/A":
            wrong = int(float(tok[8]))
        row = Row(size=int(tok[0]), count=int(tok[1]), dtype=tok[2], redop=tok[3], time_us=float(tok[5]),
                  algbw_gbps=float(tok[6]), busbw_gbps=float(tok[7]), wrong=wrong)
    except ValueError:
        raise InputError(f"line {lineno}: not a result row (expected size, count, type, redop, root, then time, algbw, "
                         f"busbw numbers): {line.strip()[:80]!r}", file=file) from None
    if not all(math.isfinite(v) and v >= 0 for v in (row.time_us, row.algbw_gbps, row.busbw_gbps)):
        raise InputError(f"line {lineno}: time and bandwidths must be finite and not negative: {line.strip()[:80]!r}",
                         file=file)
    return row


def op_from_program(name: str) -> str:
    base = re.sub(r"_perf(?:_[A-Za-z0-9]+)?$", "", name.rsplit("/", 1)[-1])
    if base in PROGRAMS:
        return PROGRAMS[base]
    raise InputError(f"{name}: not one of the programs whose results are used "
                     f"({', '.join(p + '_perf' for p in PROGRAMS)})")


def op_from_file_name(path: str | Path) -> str | None:
    """The collective a file name spells (``allreduce-4n.log`` -> all_reduce); None when it names
    none or several."""
    name = Path(path).name.lower()
    found = {_normal_file_op(m.group(1)) for m in _FILE_OP_RE.finditer(name)}
    return found.pop() if len(found) == 1 else None


def _normal_file_op(s: str) -> str:
    key = s.replace("-", "").replace("_", "")
    return {"allreduce": "all_reduce", "allgather": "all_gather", "reducescatter": "reduce_scatter",
            "alltoall": "all_to_all", "sendrecv": "send_recv"}[key]


def _finish(run: _Run, file: str) -> NcclTestsLog:
    where = f"the run at line {run.line}"
    program = run.starting
    if program is None:
        names = {n.rsplit("/", 1)[-1] for n, _ in run.programs}
        if len(names) > 1:
            raise InputError(f"{where}: the lines before it name several nccl-tests programs ({', '.join(sorted(names))}); "
                             "give each run its own file", file=file)
        program = names.pop() if names else None
    if program is not None:
        try:
            op = op_from_program(program)
        except InputError as exc:
            raise InputError(f"{where}: {exc.detail}", file=file) from None
    else:
        op = op_from_file_name(file)
        if op is None:
            raise InputError(f"{where}: the log does not name its program (all_reduce_perf, ...) and the file name names "
                             "no single collective; put it in the file name (e.g. all_reduce-4nodes.log)", file=file)
    if not run.ranks:
        raise InputError(f"{where}: no '#  Rank N ... on HOST device ...' lines, so the number of ranks and nodes is "
                         "unknown", file=file)
    ranks = sorted(run.ranks)
    if ranks[-1] + 1 != len(ranks):
        raise InputError(f"{where}: the Rank lines list {len(ranks)} ranks but the highest is {ranks[-1]}; is the "
                         "log cut short?", file=file)
    if not run.rows:
        raise InputError(f"{where}: no result rows (size count type redop root time algbw busbw ...)", file=file)
    hosts: dict[str, int] = {}
    for r in ranks:
        h = run.ranks[r][0]
        hosts[h] = hosts.get(h, 0) + 1
    gpus = {g for _, g in run.ranks.values() if g}
    return NcclTestsLog(file=file, line=run.line, op=op, program=program, ranks=len(ranks), hosts=tuple(hosts),
                        ranks_per_host=tuple(hosts.values()), gpu=sorted(gpus)[0] if len(gpus) == 1 else None,
                        rows=run.rows, avg_busbw_gbps=run.avg, version=run.version, params=run.params)
