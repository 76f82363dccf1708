"""Where costmodel may write, and how: the one guard every command that writes a file goes through
(``bench --out``, ``calibrate --out`` / ``--save-records``, ``calibrate --nccl-tests --out``,
``fit-profile --out``, ``--plot``, ``check --junit``).

:func:`check_output` is called before any work is done (a benchmark, a fit, a search) and
:func:`write_output` / :func:`atomic_target` when the work has succeeded. The rules:

1. Never inside costmodel's own files: the installed package (``costmodel/`` with its data in
   ``costmodel/_data/``) or, in a source checkout (the one this package runs from, or any
   checkout the path lies in), the shipped ``hardware/`` specs, ``data/frameworks/``,
   ``data/models/``, ``data/scaling_laws.yaml`` and ``plans/``. The one exception: a calibration
   overlay may go to ``hardware/calibrated/<device>.yaml``, where it is read as that device's
   calibration.
2. Never over a file the command reads (an input) or over another output of the same command.
3. An existing file is replaced only when it holds what the command writes (kernel records, a
   calibration overlay of the same device, a node spec, a framework profile, an image, a JUnit
   report); anything
   else is refused, so a mistyped path does not destroy an unrelated file. A read-only file is
   never replaced, and a directory is never an output.
4. The directory must exist and be writable, checked before the work starts.
5. The file is written to a temporary file in the same directory, flushed to disk and renamed over
   the destination (``os.replace``): a run that fails or is interrupted leaves an existing output
   as it was and no partial file behind.

Only the standard library (and PyYAML, lazily) is imported here.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import InputError

# What each kind of output is, in words, for the messages.
KINDS = {
    "records": "a JSONL file of measurement records",
    "overlay": "a calibration overlay",
    "node": "a node spec (kind: node)",
    "profile": "a framework profile",
    "plot": "an image (PNG, SVG, PDF, JPEG or PostScript)",
    "junit": "a JUnit XML report",
}

# How much of an existing file is read to tell what it holds.
_SNIFF_BYTES = 1 << 16

# Parts of a source checkout that costmodel reads as its own shipped inputs.
_CHECKOUT_SHIPPED = (("hardware",), ("plans",), ("data", "frameworks"), ("data", "models"), ("data", "scaling_laws.yaml"),
                     ("costmodel",))


def _package_dir() -> Path:
    return Path(__file__).resolve().parent


def _is_checkout(root: Path) -> bool:
    """``root`` is a costmodel source checkout: its pyproject names the project costmodel and the
    shipped hardware/ and costmodel/ directories are there."""
    try:
        if not ((root / "hardware").is_dir() and (root / "costmodel").is_dir()):
            return False
        text = (root / "pyproject.toml").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return 'name = "costmodel"' in text


def _checkouts(path: Path) -> list[Path]:
    """The checkout this package runs from (an editable install), and any checkout ``path`` lies in."""
    out = []
    pkg_parent = _package_dir().parent
    if _is_checkout(pkg_parent):
        out.append(pkg_parent)
    for anc in path.parents:
        if anc not in out and _is_checkout(anc):
            out.append(anc)
    return out


def _inside(p: Path, root: Path) -> bool:
    try:
        p.relative_to(root)
        return True
    except ValueError:
        return False


def _calibrated_slot(rel: tuple[str, ...]) -> bool:
    """``hardware/calibrated/<name>`` (one file directly inside), relative to a package or checkout root."""
    return len(rel) == 3 and rel[0] == "hardware" and rel[1] == "calibrated"


def protected_reason(path: str | Path, kind: str) -> str | None:
    """Why costmodel must not write ``path`` (already resolved or not), or None when it may."""
    p = Path(path).resolve()
    pkg = _package_dir()
    data = pkg / "_data"
    if _inside(p, pkg):
        if data.is_dir() and _inside(p, data):  # an installed package's data: read-only to costmodel
            rel = p.relative_to(data).parts
            if not (kind == "overlay" and _calibrated_slot(rel)):
                what = f"shipped {rel[0]}/ directory" if len(rel) > 1 else "shipped data"
                extra = "; overlays go to hardware/calibrated/<device>.yaml" if kind == "overlay" and rel[:1] == ("hardware",) else ""
                return f"inside the {what} of the installed costmodel package ({data}){extra}"
        else:
            return f"inside the costmodel package ({pkg})"
    for root in _checkouts(p):
        try:
            rel = p.relative_to(root).parts
        except ValueError:
            continue
        if kind == "overlay" and _calibrated_slot(rel):
            continue
        for shipped in _CHECKOUT_SHIPPED:
            if rel[:len(shipped)] == shipped:
                where = "/".join(shipped) + ("" if shipped[-1].endswith(".yaml") else "/ directory")
                extra = "; overlays go to hardware/calibrated/<device>.yaml" if kind == "overlay" and shipped == ("hardware",) else ""
                return f"inside the shipped {where} of the costmodel checkout {root}{extra}"
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(_SNIFF_BYTES)
    except OSError:
        return b""


def _yaml_mapping(path: Path) -> dict | None:
    try:
        from .specs import read_yaml

        data = read_yaml(path)
    except Exception:  # anything unreadable is not what we would replace
        return None
    return data if isinstance(data, dict) else None


def _holds(path: Path, kind: str) -> bool:
    """An existing file ``path`` holds what an output of ``kind`` is (so it may be replaced)."""
    head = _head(path)
    if not head.strip():
        return True  # an empty file holds nothing to lose
    if kind == "plot":
        return head.startswith((b"\x89PNG", b"%PDF", b"\xff\xd8\xff", b"%!PS")) or b"<svg" in head[:4096]
    if kind == "junit":
        return head.lstrip().startswith(b"<") and (b"<testsuite" in head[:4096] or b"<testsuites" in head[:4096])
    if kind == "records":
        for line in head.decode("utf-8", errors="replace").splitlines():
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            try:
                return isinstance(json.loads(s), dict)  # not an input file: what an output would replace
            except ValueError:
                return False  # the first line of a large file may be cut: then it is not ours to judge
        return False
    data = _yaml_mapping(path)
    if data is None:
        return False
    if kind == "overlay":
        from .calibration.defaults import FORMAT

        return data.get("format") == FORMAT
    if kind == "node":
        return data.get("kind") == "node"
    if kind == "profile":
        return "parameters" in data and ("base" in data or "step_model" in data)
    return False


def overlay_device_conflict(path: str | Path, device: str) -> str | None:
    """Why an overlay fitted on ``device`` must not be written at ``path``: the file there is the
    overlay of another device, or the path is ``calibrated/<other id>.yaml`` (read as the overlay
    of that id). None when it may."""
    p = Path(path)
    if p.parent.name == "calibrated" and p.suffix in (".yaml", ".yml") and p.stem != device:
        return (f"a file in a calibrated/ directory is read as the overlay of the device it names ({p.stem!r}); "
                f"this overlay was measured on {device!r}: write it to calibrated/{device}.yaml or elsewhere")
    if p.is_file():
        data = _yaml_mapping(p)
        other = data.get("device") if data else None
        if isinstance(other, str) and other != device:
            return f"holds the overlay of {other!r}; this one was measured on {device!r}: refusing to replace it"
    return None


def check_output(path: str | Path, kind: str, *, flag: str = "out", inputs: Iterable = (),
                 others: Iterable[tuple[str, str | Path | None]] = (), device: str | None = None) -> Path:
    """Raise InputError (naming ``path`` and ``--flag``) unless an output of ``kind`` (a KINDS key)
    may be written at ``path`` under the module's rules; return the path. ``inputs``: files the
    command reads (paths, or (flag, path) to name the flag in the message); ``others``: (flag, path) of the command's other outputs; ``device``: for an
    overlay, the device it was measured on, when known."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    p = Path(path)

    def err(msg: str) -> InputError:
        return InputError(msg, file=p, field=flag)

    if str(path) == "" or p.name in ("", ".", ".."):
        raise err("expected a file name")
    if p.is_dir():
        raise err("is a directory; expected a file to write")
    why = protected_reason(p, kind)
    if why:
        raise err(f"refusing to write {why}")
    for item in inputs:
        in_flag, f = item if isinstance(item, tuple) else (None, item)
        if f is not None and _same_file(p, Path(f)):
            what = f"one of the --{in_flag} inputs" if in_flag else "an input of this command"
            raise err(f"is {what}; write the output to another file")
    for other_flag, other in others:
        if other is not None and _same_file(p, Path(other)):
            raise err(f"is also the --{other_flag} output; give each output its own file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise err("its directory does not exist")
    if p.exists() or p.is_symlink():
        if not p.is_file():
            raise err("exists and is not a regular file")
        if not os.access(p, os.W_OK):
            raise err("is read-only; refusing to replace it")
        if not _holds(p, kind):
            raise err(f"exists and is not {KINDS[kind]}; refusing to replace it (move it away or choose another path)")
    if kind == "overlay" and device is not None:
        why = overlay_device_conflict(p, device)
        if why:
            raise err(why)
    _probe_writable(parent, err)
    return p


def _probe_writable(directory: Path, err) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=".costmodel-probe-", dir=directory)
    except OSError as exc:
        raise err(f"cannot write in its directory: {exc.strerror or exc}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def _mode_for(path: Path) -> int:
    """The permission bits a new file gets (an existing one keeps its own)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that go by the suffix pick
    the same format) to write; when the block ends without an error it is flushed and renamed over
    ``path``; otherwise it is removed and ``path`` is left as it was."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (:func:`atomic_target`)."""
    path = Path(path)
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def write_output(path: str | Path, data: str | bytes, kind: str, *, flag: str = "out",
                 inputs: Iterable = (), others: Iterable[tuple[str, str | Path | None]] = (),
                 device: str | None = None) -> Path:
    """check_output again (the file system may have changed while the work ran), then write_atomic."""
    check_output(path, kind, flag=flag, inputs=inputs, others=others, device=device)
    return write_atomic(path, data)
