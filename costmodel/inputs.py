"""Reading input files: the one reader every file costmodel takes goes through (plans, hardware
specs, calibration overlays, framework profiles, model presets, scaling-law files, Hugging Face
``config.json`` files and JSONL measurement records).

Whatever a file holds, reading it either returns data or raises one :class:`InputError` that names
the file (and the line where there is one), never a traceback:

- a size limit per kind of file (:data:`MAX_DOCUMENT_BYTES` for YAML and JSON documents,
  :data:`MAX_RECORDS_BYTES` for JSONL records), checked before the file is read;
- UTF-8 text only: binary files, NUL bytes, Latin-1 or UTF-16 files are named as such;
- YAML with PyYAML's safe loader, extended to refuse duplicate mapping keys (a second ``limits:``
  would silently replace the first), non-finite numbers (``.inf``, ``.nan``, ``1.0e+400``) and
  integers longer than :data:`MAX_INT_DIGITS` digits;
- JSON without ``NaN`` / ``Infinity`` (not JSON, though Python writes them) and with the same
  integer limit;
- nesting deeper than :data:`MAX_DEPTH` levels is refused (no RecursionError).

Only the standard library is imported at module level (the GPU-side benchmark runner reads JSONL
through here without PyYAML or pydantic).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .errors import InputError

# Largest YAML or JSON document read (plans, specs, overlays, profiles, presets, HF configs): the
# shipped ones are at most a few tens of kB; a Hugging Face config.json with a large label map a
# few hundred kB. PyYAML parses about 1 MB/s, so this also bounds the time a plan takes to read.
MAX_DOCUMENT_BYTES = 4 * 2**20
# Largest JSONL file of measurement records (the shipped ones are below 1 MB).
MAX_RECORDS_BYTES = 256 * 2**20
# Longest integer literal taken (10^30 is far above any count or size costmodel models; Python
# itself refuses to convert strings of more than 4300 digits).
MAX_INT_DIGITS = 30
# Deepest nesting of lists and mappings taken (costmodel's own formats nest a handful of levels).
MAX_DEPTH = 64


# ------------------------------------------------------------------------------ parsed-file cache

# Parsed inputs (presets, specs, overlays, profiles) kept per process, keyed by the file's absolute
# path, modification time and size: an unchanged file is parsed once, an edited one is read again.
# Only immutable results (frozen models) are cached, so a caller cannot change what the next gets.
_PARSED: dict[tuple, object] = {}
MAX_CACHED_FILES = 1024


# Inside one_look() (one estimate of the library API), each file's status is taken once: an
# estimate asks after its preset, overlay and profile files several times, and they are one version
# for the whole estimate. None outside (every call looks again).
_LOOKED: list = [None]


class one_look:
    """``with one_look():`` each path's status (stat, file_key) is taken once inside the block."""

    def __enter__(self):
        self._outer = _LOOKED[0] is not None
        if not self._outer:
            _LOOKED[0] = {}

    def __exit__(self, *exc):
        if not self._outer:
            _LOOKED[0] = None
        return False


def once_per_look(key, build):
    """``build()``, once per ``key`` inside one_look() (its files looked at once, so it reads the
    same versions each time); every time outside. ``key``: hashable, naming what is built."""
    looked = _LOOKED[0]
    if looked is None:
        return build()
    key = ("built", key)
    hit = looked.get(key, looked)
    if hit is looked:
        hit = looked[key] = build()
    return hit


def stat(path: str | Path):
    """``os.stat(path)``, or None when it cannot be taken (once per path inside one_look)."""
    looked = _LOOKED[0]
    if looked is not None:
        key = ("stat", path)
        if key in looked:
            return looked[key]
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        st = None
    if looked is not None:
        looked[key] = st
    return st


def file_key(path: str | Path) -> tuple | None:
    """(absolute path, mtime_ns, size) of ``path``, or None when it cannot be stat()ed."""
    looked = _LOOKED[0]
    if looked is not None:
        hit = looked.get(("key", path), looked)
        if hit is not looked:
            return hit
    st = stat(path)
    key = None if st is None else (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    if looked is not None:
        looked[("key", path)] = key
    return key


def cached_by_file(kind: str, path: str | Path, build, *extra):
    """``build()`` (which parses ``path``), once per version of the file: kept under ``kind``, the
    file's key and ``extra`` (hashable). Errors are not cached."""
    key = file_key(path)
    if key is None:
        return build()
    key = (kind, key, extra)
    hit = _PARSED.get(key)
    if hit is None:
        if len(_PARSED) >= MAX_CACHED_FILES:
            _PARSED.clear()
        hit = _PARSED[key] = build()
    return hit


def _fmt_size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def read_bytes(path: str | Path, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them (InputError otherwise, before reading)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise InputError("is a directory; expected a file", file=path)
        size = path.stat().st_size
        if size > limit:
            raise InputError(f"is {_fmt_size(size)}; files of this kind are read up to {_fmt_size(limit)}", file=path)
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, FileNotFoundError):
            reason = "file does not exist"
        raise InputError(f"cannot read file: {reason}", file=path) from None
    if len(data) > limit:  # grew while we looked, or not a regular file (a pipe)
        raise InputError(f"is larger than {_fmt_size(limit)}, the limit for files of this kind", file=path)
    return data


def decode_text(data: bytes, file: str | Path) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark dropped); InputError naming the problem."""
    nul = data.find(b"\x00")
    wide = data.startswith((b"\xff\xfe", b"\xfe\xff")) or (
        nul >= 0 and len(data) >= 4 and max(data[0::2].count(0), data[1::2].count(0)) >= 0.4 * len(data))
    if wide:  # UTF-16: a byte-order mark, or every other byte of ASCII text zero
        raise InputError("is UTF-16 (or another wide encoding) text; save it as UTF-8", file=file)
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise InputError(f"contains a NUL byte (line {line}): not a text file", file=file)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); save it as UTF-8",
                         file=file) from None
    return text.removeprefix("\ufeff")


def read_text(path: str | Path, limit: int = MAX_DOCUMENT_BYTES) -> str:
    """The UTF-8 text of ``path`` (read_bytes, then decode_text)."""
    return decode_text(read_bytes(path, limit), path)


# ------------------------------------------------------------------------------------------ YAML

def _yaml_loader():
    import yaml

    global _LOADER
    if _LOADER is not None:
        return _LOADER

    class Loader(yaml.SafeLoader):
        """yaml.SafeLoader that refuses duplicate keys, non-finite floats, over-long integers and
        deep nesting (errors carry the position, as PyYAML's own)."""

        def compose_node(self, parent, index):
            self._depth = getattr(self, "_depth", 0) + 1
            try:
                if self._depth > MAX_DEPTH:
                    raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                                      self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: the base class reports it
                        continue
                    if first is not None:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r} (first at line {first.line + 1})", key_node.start_mark)
                    seen[key] = key_node.start_mark
            return super().construct_mapping(node, deep=deep)

        def construct_yaml_int(self, node):
            digits = sum(ch.isdigit() for ch in str(node.value))
            if digits > MAX_INT_DIGITS:
                return _Bad(f"integer of {digits} digits is too large (at most {MAX_INT_DIGITS})", node.start_mark.line + 1)
            return super().construct_yaml_int(node)

        def construct_yaml_float(self, node):
            v = super().construct_yaml_float(node)
            if not math.isfinite(v):
                return _Bad(f"{node.value} is not a finite number", node.start_mark.line + 1)
            return v

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    Loader.add_constructor("tag:yaml.org,2002:float", Loader.construct_yaml_float)
    _LOADER = Loader
    return Loader


_LOADER = None
_FAST_LOADER = None


def _fast_yaml_loader():
    """The same loader on libyaml's parser (yaml.CSafeLoader, ~10x faster), or None where PyYAML
    was built without it. Its composer is libyaml's, without the nesting limit, so it reads only
    the files costmodel ships (shallow, and known to parse)."""
    global _FAST_LOADER
    if _FAST_LOADER is None:
        import yaml

        try:
            from yaml.cyaml import CParser as parser
        except ImportError:
            parser = None
        if parser is None:
            _FAST_LOADER = False
        else:
            class FastLoader(parser, _yaml_loader()):  # libyaml's parser and composer, our constructor
                def __init__(self, stream):
                    parser.__init__(self, stream)
                    yaml.constructor.SafeConstructor.__init__(self)
                    yaml.resolver.Resolver.__init__(self)

            _FAST_LOADER = FastLoader
    return _FAST_LOADER or None


def _shipped_roots() -> tuple[str, ...]:
    """The directories of the YAML costmodel ships (wheel: costmodel/_data/*; checkout: the root's
    hardware/, data/, plans/), as resolved path prefixes."""
    global _ROOTS
    if _ROOTS is None:
        here = Path(__file__).resolve().parent
        roots = []
        for name in ("hardware", "data", "plans"):
            d = here / "_data" / name
            roots.append(str(d if d.is_dir() else here.parent / name) + os.sep)
        _ROOTS = tuple(roots)
    return _ROOTS


_ROOTS: tuple[str, ...] | None = None


def is_shipped_file(path: str | Path) -> bool:
    """A file under the directories costmodel ships its YAML in."""
    return os.path.realpath(path).startswith(_shipped_roots())


def parse_yaml(text: str, file: str | Path = "<yaml>", fast: bool = False) -> object:
    """Parse YAML ``text`` (safe loader, see the module) into plain data; InputError on anything wrong.
    ``fast``: through libyaml where available (shipped files only, see _fast_yaml_loader); a file
    it finds wrong is parsed again the usual way, for the usual message."""
    import yaml

    if fast and _fast_yaml_loader() is not None:
        loader = _fast_yaml_loader()(text)
        try:
            data = loader.get_single_data()
            if _find_bad(data) is None:
                return data
        except yaml.YAMLError:
            pass
        finally:
            loader.dispose()
    loader = _yaml_loader()(text)
    try:
        data = loader.get_single_data()
        _raise_bad(data, file)
        return data
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"not valid YAML{where}: {_one_line(problem)}", file=file) from None
    except RecursionError:
        raise InputError(f"not valid YAML: nested too deeply (at most {MAX_DEPTH} levels)", file=file) from None
    except ValueError as exc:  # e.g. a timestamp out of range
        raise InputError(f"not valid YAML: {_one_line(str(exc))}", file=file) from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path, limit: int = MAX_DOCUMENT_BYTES) -> object:
    """Read and parse a YAML file (read_text, parse_yaml; libyaml's parser for shipped files)."""
    return parse_yaml(read_text(path, limit), path, fast=is_shipped_file(path))


# ------------------------------------------------------------------------------------------ JSON

class _Bad:
    """A value an input file may not hold (a non-finite number, an over-long integer): parsed into
    this marker so that the key it stands under can be named, then reported by _raise_bad."""

    __slots__ = ("reason", "line")

    def __init__(self, reason: str, line: int | None = None):
        self.reason = reason
        self.line = line


def _find_bad(data, path: tuple = ()) -> tuple[tuple, _Bad] | None:
    """The first _Bad in ``data`` and the keys leading to it (each shared object visited once, so
    YAML aliases do not multiply the walk)."""
    stack = [(data, path)]
    seen: set[int] = set()
    while stack:
        obj, at = stack.pop()
        if isinstance(obj, _Bad):
            return at, obj
        if isinstance(obj, (dict, list)):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            items = list(obj.items()) if isinstance(obj, dict) else list(enumerate(obj))
            for k, v in reversed(items):
                if isinstance(k, _Bad):
                    return at, k
                stack.append((v, at + (k,)))
    return None


def _raise_bad(data, file, line: int | None = None) -> None:
    hit = _find_bad(data)
    if hit is None:
        return
    path, bad = hit
    field = ".".join(str(p) for p in path) or None
    where = line if line is not None else bad.line
    at = f"line {where}: " if where is not None and line is None else ""
    raise InputError(f"{at}{bad.reason}", file=file, field=field)


def _no_constant(name: str):
    return _Bad(f"{name} is not a number JSON allows")


def _int(text: str):
    digits = sum(ch.isdigit() for ch in text)
    if digits > MAX_INT_DIGITS:
        return _Bad(f"integer of {digits} digits is too large (at most {MAX_INT_DIGITS})")
    return int(text)


def _float(text: str):
    v = float(text)
    if not math.isfinite(v):
        return _Bad(f"{text} is too large to be a number")
    return v


def _depth_ok(text: str) -> bool:
    """Whether ``text``'s brackets nest at most MAX_DEPTH deep (strings skipped): checked before
    json.loads, whose recursion would otherwise run out."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return True
    depth = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def parse_json(text: str, file: str | Path = "<json>", line: int | None = None) -> object:
    """Parse one JSON document (see the module's rules); InputError naming ``file`` (as
    ``file:line`` for a JSONL line) and the key of a bad value."""
    where = f"{file}:{line}" if line is not None else file

    def err(msg: str) -> InputError:
        return InputError(msg, file=where)

    if not _depth_ok(text):
        raise err(f"not valid JSON: nested more than {MAX_DEPTH} levels deep")
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_int=_int, parse_float=_float)
    except json.JSONDecodeError as exc:
        pos = f" at line {exc.lineno}, column {exc.colno}" if line is None else f" at column {exc.colno}"
        raise err(f"not valid JSON{pos}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise err(f"not valid JSON: {_one_line(str(exc)) or type(exc).__name__}") from None
    _raise_bad(data, where, line)
    return data


def load_json(path: str | Path, limit: int = MAX_DOCUMENT_BYTES) -> object:
    """Read and parse a JSON file (read_text, parse_json)."""
    return parse_json(read_text(path, limit), path)


def read_jsonl(path: str | Path, limit: int = MAX_RECORDS_BYTES) -> list[tuple[int, dict]]:
    """(line number, object) for every JSON object line of a JSONL file; blank and ``#`` lines are
    skipped. InputError naming the file and line on anything else."""
    path = Path(path)
    out = []
    for i, line in enumerate(read_text(path, limit).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rec = parse_json(line, path, line=i)
        if not isinstance(rec, dict):
            raise InputError("expected a JSON object", file=f"{path}:{i}")
        out.append((i, rec))
    return out


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
