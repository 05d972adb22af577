"""Downloads through torchvision that leave nothing behind when they fail.

torchvision creates `root` (and its missing parents), writes the archive and extracts it before it
knows whether the download succeeds, so an offline `dataset.download=true` would leave an empty
folder or a partial archive behind. What the attempt created is removed; what was there before
(the user's root, their other files) never is.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from imbalance_bench.errors import DataError


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` (itself included) that does not exist yet, if any."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing = folder
    return missing


def _entries(root: Path, folders: Sequence[str]) -> set[Path]:
    """What is in `root`, and everything inside its `folders` (the ones the download writes into).
    Only those are listed: a data root holding other datasets is not walked."""
    if not root.is_dir():
        return set()
    paths = set(root.iterdir())
    for name in folders:
        if (root / name).is_dir() and not (root / name).is_symlink():
            paths.update((root / name).rglob("*"))
    return paths


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def removed_if_failed(root: Path, folders: Sequence[str]) -> Iterator[None]:
    """Run the body; if it raises (Ctrl-C included), remove what it created in `root` and in its
    `folders`, and `root` itself with any parents it made."""
    created = _first_missing(root)
    before = _entries(root, folders)
    try:
        yield
    except BaseException:
        if created is not None:
            _remove(created)
        else:
            removed: list[Path] = []
            for path in sorted(_entries(root, folders) - before, key=lambda p: len(p.parts)):
                if not any(parent in removed for parent in path.parents):
                    _remove(path)
                    removed.append(path)
        raise


def download_or_fail(what: str, root: Path, folders: Sequence[str], fetch: Callable[[], object]) -> None:
    """`fetch()` (a torchvision download into `root`); on failure nothing it created is left and a
    DataError names `root`."""
    try:
        with removed_if_failed(root, folders):
            fetch()
    except Exception as exc:
        reason = " ".join(str(exc).split())  # torchvision's reasons span lines (one per mirror tried)
        raise DataError(f"{root}: downloading {what} failed ({type(exc).__name__}: {reason}); nothing was "
                        "left behind") from None
