"""Small helpers shared by the package: devices, seeding, atomic writes."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import time
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows: no flock, so FolderLock takes no lock there (see its docstring)
    fcntl = None

from gencls.errors import GenclsError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GenclsError(f"--device {name}: not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GenclsError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GenclsError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise GenclsError(f"--device {name}: only cpu and cuda are supported")
    return device


def cpu_has_bf16() -> bool:
    """Whether oneDNN computes bfloat16 products on this CPU (it needs AVX-512; AVX-512 BF16 or AMX
    do them natively). Without it, ``--precision bf16`` on the CPU falls back to slow generic code:
    several times slower than fp32 (README, "Speed"). True when it cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def autocast_for(device: torch.device, precision: str):
    """A context-manager factory for the training step: bf16 autocast on ``device`` for
    ``precision == "bf16"`` (no weight cache: weights change every step), else nothing."""
    if precision == "bf16":
        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
        return autocast
    return contextlib.nullcontext


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # e.g. a read-only folder: name the file meant, not mkstemp's temporary name
        raise _naming(e, path) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files; give them the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):  # a full disk, a rename refused: about `path`, not the temporary file
            raise _naming(e, path) from None
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` (same type and errno) about ``path``."""
    if e.errno is None:
        return e
    return type(e)(e.errno, e.strerror, str(path))


# the temporary names of atomic_write_bytes: ".NAME." + mkstemp's 8 random characters + ".tmp"
TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp")


def remove_stale_temp_files(folder: str | os.PathLike, owned=lambda path: True, min_age_s: float = 600.0) -> list[Path]:
    """Remove the temporary files that atomic writes killed mid-way left in ``folder`` and below
    (only names of ``TEMP_NAME``'s pattern). Call it holding the folder's ``FolderLock``: a temp
    file whose target ``owned(target)`` is the lock holder's own is removed whatever its age; any
    other (a file another command, e.g. ``evaluate``, may be writing right now) only once it is
    ``min_age_s`` old. Returns the files removed."""
    removed = []
    for p in Path(folder).rglob(".*.tmp"):
        m = TEMP_NAME.fullmatch(p.name)
        if m is None or not p.is_file() or p.is_symlink():
            continue
        try:
            if not owned(p.with_name(m["target"])) and time.time() - p.stat().st_mtime < min_age_s:
                continue
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


LOCK_NAME = ".gencls.lock"


class FolderLock:
    """An advisory lock (``flock``) on ``FOLDER/.gencls.lock``, not waited for: exclusive (the one
    process that writes a run folder) or ``shared`` (several may hold it, none exclusively).

    The lock is the kernel's: a process that dies releases it, so a lock file left behind never
    blocks. Taking it creates the folder if need be; releasing it removes the lock file (when no
    one else holds it) and a folder it created that stayed empty. Refused: ``GenclsError`` naming
    the folder and, if known, the holder's pid. A folder where no lock file can be made (it is
    not a folder, or cannot be written) is not locked: whatever writes there fails on its own; nor
    is one where the platform (no ``fcntl``: Windows) or the filesystem (``flock`` unsupported,
    e.g. some NFS or FUSE mounts) has no such lock."""

    def __init__(self, folder: str | os.PathLike, shared: bool = False, what: str = "is training in",
                 name: str = LOCK_NAME, wait=None):
        """``name``: the lock file's name in ``folder`` (several locks in one folder). ``wait``:
        instead of refusing a held lock, call ``wait(message)`` once and wait for it."""
        self.folder, self.shared, self.what, self.wait = Path(folder), shared, what, wait
        self.path = self.folder / name
        self.fd: int | None = None
        self.created: list[Path] = []  # folders made for the lock, innermost first

    def acquire(self) -> "FolderLock":
        if fcntl is None:
            return self  # no flock on this platform: not locked
        missing = []
        for p in (self.folder, *self.folder.parents):
            if os.path.lexists(p):
                break
            missing.append(p)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return self  # not a folder / not writable: the run's own checks say so
        self.created = missing
        busy, said = 0, False
        for _ in range(200):  # the file may be removed by its holder between our open and our flock
            existed = os.path.lexists(self.path)  # a lock file not made here is left as it is
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
            except FileNotFoundError:  # the folder went: a holder that made it removed it empty when it failed
                again = [p for p in (self.folder, *self.folder.parents) if not os.path.lexists(p)]
                try:
                    self.folder.mkdir(parents=True, exist_ok=True)
                except OSError:
                    return self
                self.created = self.created or again
                continue
            except OSError:
                self._remove_created()
                return self
            mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    # flock unsupported here (ENOLCK, EOPNOTSUPP, ENOSYS, ...): not locked
                    os.close(fd)
                    if not existed:
                        self._unlink_quietly()
                    self._remove_created()
                    return self
                pid = self._holder(fd)
                if self.wait is not None:
                    if not said:  # said once; a third process taking it first is waited for too
                        self.wait(f"{self.folder}: waiting for another gencls process{f' (pid {pid})' if pid else ''} "
                                  f"that {self.what} this folder")
                        said = True
                    try:
                        fcntl.flock(fd, mode)
                    except OSError:
                        os.close(fd)
                        raise
                elif busy < 10:  # a shared holder releasing holds it exclusively for an instant: look again
                    os.close(fd)
                    busy += 1
                    time.sleep(0.01 * busy)
                    continue
                else:
                    os.close(fd)
                    raise GenclsError(f"{self.folder}: another gencls process{f' (pid {pid})' if pid else ''} "
                                      f"{self.what} this folder; wait for it to end (or stop it) and try again") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except OSError:
                same = False
            if not same:  # locked a file its holder has just removed: take the new one
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)  # an exclusive holder's pid; shared holders leave it empty
                if not self.shared:
                    os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                pass
            self.fd = fd
            return self
        raise GenclsError(f"{self.folder}: could not lock {self.path}")

    @staticmethod
    def _holder(fd: int) -> int | None:
        try:
            text = os.pread(fd, 32, 0).decode().strip()
            return int(text) if text.isdigit() else None
        except (OSError, UnicodeDecodeError, ValueError):
            return None

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            # no one else holds it (a shared one, or a process that opened it just now): remove it
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)
        self._remove_created()

    def _unlink_quietly(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _remove_created(self) -> None:
        for p in self.created:  # a folder made for the lock that nothing was written into
            try:
                p.rmdir()
            except OSError:
                break
        self.created = []

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_user_file(path: str | os.PathLike, flag: str) -> str:
    """The text of a file a user named with ``flag`` (``--config``, ``--labelled``); a missing or
    unreadable file is one ``GenclsError`` naming the flag and the file."""
    path = Path(path)
    try:
        return path.read_text()
    except FileNotFoundError:
        raise GenclsError(f"{flag} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GenclsError(f"{flag} {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None


def read_json(path: str | os.PathLike):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise GenclsError(f"{path}: file not found") from None
    except OSError as e:  # a folder where the file should be, no permission, ...
        raise GenclsError(f"{path}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GenclsError(f"{path}: malformed JSON ({e})") from None
