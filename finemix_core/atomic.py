"""Every file finemix writes goes through here: written under a temporary name beside its destination, then renamed
into place, so a crash, a full disk or a SIGKILL leaves the previous state or nothing — never half a file.

- `check_new(out, overwrite)`: the one "output exists" check (before any work);
- `check_writable(out)`: fail before hours of work when the output's folder cannot be written;
- `save_dir(dest, write)`: a folder (models, reports, zoo entries);
- `write_csv(frame, out)` / `write_bytes(data, out)`: one file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from finemix_core.errors import FinemixError


def check_new(out: Path, overwrite: bool = False) -> None:
    """An output that exists is only replaced when asked."""
    if Path(out).exists() and not overwrite:
        raise FinemixError(f"output {out} exists; choose another path or pass --overwrite")


def check_writable(out: Path) -> None:
    """Fail before hours of work when the output cannot be written: its nearest existing folder must be writable."""
    parent = Path(out).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise FinemixError(f"cannot write {out}: {parent} is not a writable folder; choose another --out")


def _cannot(dest: Path, exc: OSError) -> FinemixError:
    return FinemixError(f"cannot write {dest}: {exc.strerror or exc}; choose a writable folder with free space")


def _clean_dead_tmp(dest: Path) -> None:
    """Remove temp folders for `dest` left by killed writers (their pid is gone); live writers keep theirs."""
    for tmp in dest.parent.glob(f".tmp-{dest.name}-*"):
        pid = tmp.name.removeprefix(f".tmp-{dest.name}-").split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_dir(dest: Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Write a folder under a temporary name beside `dest`, then rename it into place."""
    dest = Path(dest)
    check_new(dest, overwrite)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _clean_dead_tmp(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-{os.getpid()}-", dir=dest.parent))
    except OSError as exc:
        raise _cannot(dest, exc) from None
    try:
        write(tmp)
        if dest.exists():
            old = dest.with_name(f".tmp-old-{dest.name}-{os.getpid()}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except OSError as exc:  # disk full, permissions: nothing half-written stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise _cannot(dest, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _write_file(out: Path, write: Callable[[Path], None]) -> Path:
    out = Path(out)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(out)
    except OSError as exc:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise _cannot(out, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def write_csv(frame, out: Path) -> Path:
    """A pandas frame as CSV, whole or not at all."""
    return _write_file(out, lambda tmp: frame.to_csv(tmp, index=False))


def write_bytes(data: bytes, out: Path) -> Path:
    return _write_file(out, lambda tmp: tmp.write_bytes(data))
