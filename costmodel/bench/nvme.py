"""NVMe (or any file system) sequential write then read on a scratch file the user names.

The file must not exist beforehand (the harness never clobbers a user's file); it is created,
written and read in large blocks with direct I/O (``O_DIRECT``, page-aligned buffers) where the
file system allows it, otherwise buffered with ``fsync`` after writing and the page cache dropped
(``posix_fadvise(DONTNEED)``) before reading. The file is removed afterwards, also on Ctrl-C and
on SIGTERM (try/finally, with a SIGTERM handler that turns the signal into KeyboardInterrupt).
"""
from __future__ import annotations

import mmap
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import InputError
from .timing import Case, median

BLOCK_BYTES = 8 * 2**20  # 8 MiB requests: large enough for sequential throughput on NVMe


@contextmanager
def scratch_file(path: str | Path):
    """Yield ``path`` (which must not exist) and remove it afterwards, even on SIGINT/SIGTERM."""
    path = Path(path)
    if path.exists():
        raise InputError("scratch file already exists; name a new file (it is deleted afterwards)", file=path, field="scratch")
    if not path.parent.is_dir():
        raise InputError("directory of the scratch file does not exist", file=path, field="scratch")

    def _on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = None
    try:
        old = signal.signal(signal.SIGTERM, _on_term)
    except ValueError:  # not the main thread: rely on try/finally alone
        old = None
    try:
        yield path
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _aligned(nbytes: int) -> mmap.mmap:
    return mmap.mmap(-1, nbytes)  # anonymous maps are page-aligned, as O_DIRECT needs


def _open(path: Path, flags: int, direct: bool) -> tuple[int, bool]:
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o600), True
        except OSError:
            pass
    return os.open(path, flags, 0o600), False


def nvme_records(path: str | Path, total_bytes: int = 2**30, repeats: int = 3, hardware: str = "host",
                 seed: int = 0, direct: bool = True, tick=None) -> list[dict]:
    """Sequential write then read of ``total_bytes`` to a fresh scratch file; median of repeats."""
    total_bytes = max(BLOCK_BYTES, total_bytes // BLOCK_BYTES * BLOCK_BYTES)
    buf = _aligned(BLOCK_BYTES)
    rng = np.random.default_rng(seed)
    buf.write(rng.integers(0, 256, BLOCK_BYTES, dtype=np.uint8).tobytes())  # random data: no compression gains
    wt, rt, used_direct = [], [], True
    with scratch_file(path) as p:
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        for _ in range(repeats):
            fd, d = _open(p, os.O_WRONLY | os.O_TRUNC, direct)
            used_direct &= d
            t0 = time.perf_counter()
            try:
                for _ in range(total_bytes // BLOCK_BYTES):
                    os.write(fd, buf)
                os.fsync(fd)
            finally:
                os.close(fd)
            wt.append(time.perf_counter() - t0)
            fd, d = _open(p, os.O_RDONLY, direct)
            used_direct &= d
            try:
                if not d and hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                rbuf = _aligned(BLOCK_BYTES)
                got = 0
                t0 = time.perf_counter()
                while True:
                    nread = os.readv(fd, [rbuf])
                    if nread <= 0:
                        break
                    got += nread
                rt.append(time.perf_counter() - t0)
                if got != total_bytes or rbuf[:64] != buf[:64]:
                    raise RuntimeError(f"read back {got} of {total_bytes} bytes or wrong data")
            finally:
                os.close(fd)
            if tick:
                tick()
    out = []
    for op, ts in (("nvme_write", wt), ("nvme_read", rt)):
        s = median(ts)
        out.append({"kind": "kernel", "op": op, "bytes": total_bytes, "s": s, "gbps": total_bytes / s / 1e9,
                    "direct_io": used_direct, "repeats": repeats, "hardware": hardware, "backend": "numpy", "device": str(Path(path).parent)})
    return out


def nvme_case(path: str | Path, quick: bool, hardware: str) -> Case:
    total = 256 * 2**20 if quick else 2**30
    return Case(f"nvme write/read {total / 2**20:.0f} MiB", "nvme", lambda: nvme_records(path, total, 2 if quick else 3, hardware), weight=4)
