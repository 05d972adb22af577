"""A run directory as one process's own: the lock that keeps a second process out, the checks that
it can be written before any data is read, the leftovers of a killed run, and the `.hydra/` record.

Hydra's own `.hydra/` writes are turned off (`hydra.output_subdir: null` in conf/config.yaml) and
done here instead, once the run directory is this process's and its run is neither complete nor of
another config: a refused run leaves every file of the directory as it was.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from imbalance_bench.errors import DataError
from imbalance_bench.runfiles import atomic_write_bytes

LOCK_FILE = ".imbench.lock"
HYDRA_RECORD = ".hydra"  # Hydra's usual folder name for it
#: what a run writes as files and as folders; a folder where a file goes (or the reverse) is refused up front
OUTPUT_FILES = ("metrics.json", "summary.csv", "dataset_stats.json", "subset_indices.json", "imbench.log",
                "checkpoints/last.pt", "checkpoints/best.pt")
OUTPUT_FOLDERS = ("checkpoints", "tensorboard", HYDRA_RECORD)


class RunDirBusy(DataError):
    """Another live process holds the run directory."""


class RunDirLock:
    """A POSIX lock (`lockf`) on `<run dir>/.imbench.lock`: one process trains in a run directory at a time.

    The kernel releases the lock when its holder dies, so the file left by a killed run never blocks
    the next. A POSIX lock, unlike `flock`, is not shared with forked children (DataLoader workers),
    which may outlive a killed run by seconds; it is the holder's alone. The holder writes its PID and host into the file once its run is under way (`announce`),
    for the line that refuses a second process, and removes the file when it ends; a process that is
    refused, or finds the run complete, leaves the directory as it found it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None
        self.created = False
        self.announced = False

    def acquire(self) -> "RunDirLock":
        while True:
            try:
                fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, os.O_RDWR | os.O_CLOEXEC), False
                except FileNotFoundError:  # its holder removed it just now
                    continue
                except OSError as exc:  # e.g. left by another user's killed run
                    raise DataError(f"{self.path}: cannot open the run directory's lock file "
                                    f"({os.strerror(exc.errno or errno.EIO)}); remove it if no run uses this "
                                    "directory, or use another run directory") from None
            except OSError as exc:
                raise DataError(f"{self.path}: cannot create the run directory's lock file "
                                f"({os.strerror(exc.errno or errno.EIO)}); use another run directory") from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    os.close(fd)
                    raise DataError(f"{self.path}: cannot lock the run directory's lock file "
                                    f"({os.strerror(exc.errno)}); use a run directory on a file system that "
                                    "supports locks") from None
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process that is starting"
                os.close(fd)
                raise RunDirBusy(f"{self.path.parent}: the run directory is in use by {holder}; wait for that run "
                                 "to end, or use another run directory") from None
            if self._still_at_path(fd):
                self.fd, self.created = fd, created
                return self
            os.close(fd)  # the holder before removed the file between our open and our lock: take the new one

    def _still_at_path(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)

    def announce(self) -> None:
        """Write who holds the directory: from here on the run changes it."""
        if self.fd is None:  # a DDP process other than rank 0, which holds the lock for the run
            return
        text = f"PID {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)
        self.announced = True

    def release(self) -> None:
        if self.fd is None:
            return
        if self.created or self.announced:
            self.path.unlink(missing_ok=True)  # still locked: a process waiting on it re-opens the path
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def claimed(run_dir: Path, world) -> Iterator[RunDirLock]:
    """The run directory locked for this run and checked (`check_outputs`); in a DDP run (`world`) rank 0
    holds the lock and checks, and every process raises the DataError it meets."""
    lock, error = RunDirLock(run_dir), None
    if world.is_main:
        try:
            lock.acquire()
            check_outputs(run_dir)
        except DataError as exc:
            lock.release()
            error = str(exc)
    if world.distributed:
        error = world.broadcast(error)  # every process stops on rank 0's finding, with rank 0's line
    if error is not None:
        raise DataError(error)
    try:
        yield lock
    finally:
        lock.release()


def writable_folder_problem(folder: Path) -> str | None:
    """Why `folder` (which may not exist yet) cannot be created and written, or None when it can:
    a name too long, a file where a folder must be, or no permission in the nearest existing folder."""
    folder = Path(os.path.abspath(folder))
    for part in folder.parts:
        if len(os.fsencode(part)) > 255:
            return f"the name {part[:40]}... is longer than 255 bytes"
    existing = folder
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return f"permission denied: cannot write in {existing}"
    return None


def check_writable(folder: Path, key: str) -> None:
    """Raise DataError, naming `key` (the config key that chose the folder), when `folder` cannot be written."""
    problem = writable_folder_problem(folder)
    if problem is not None:
        raise DataError(f"{key}={folder} cannot be used: {problem}; choose another folder")


def check_outputs(run_dir: Path) -> None:
    """Before any data is read: the run directory can be written (a real write, which also catches a
    read-only file system), and no folder stands where the run writes a file (or a file where it
    makes a folder), which would only fail after training."""
    probe = run_dir / f".write-check-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise DataError(f"{run_dir}: cannot write in the run directory ({os.strerror(exc.errno or errno.EIO)}); "
                        "choose another folder") from None
    for name in OUTPUT_FILES:
        if (run_dir / name).is_dir():
            raise DataError(f"{run_dir / name} is a folder, where the run writes a file; move it away or use "
                            "another run directory")
    for name in OUTPUT_FOLDERS:
        if (run_dir / name).exists() and not (run_dir / name).is_dir():
            raise DataError(f"{run_dir / name} is a file, where the run makes a folder; move it away or use "
                            "another run directory")


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed run left (`.NAME.*.tmp`); returns them."""
    leftovers = [p for folder in (run_dir, run_dir / "checkpoints") if folder.is_dir()
                 for p in folder.glob(".*.tmp") if p.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def write_hydra_record(run_dir: Path, task_cfg) -> None:
    """`.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml` as Hydra writes them (the job's composed
    config, Hydra's config and the command-line overrides), each atomically."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra_root = HydraConfig.instance().cfg  # this job's, as {"hydra": ...}
    for name, node in (("config.yaml", task_cfg), ("hydra.yaml", hydra_root),
                       ("overrides.yaml", hydra_root.hydra.overrides.task)):
        atomic_write_bytes(run_dir / HYDRA_RECORD / name, OmegaConf.to_yaml(node).encode())
