"""Small shared helpers: atomic file writes and output-path checks."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tfdeblend.errors import TfdeblendError


def _umask() -> int:
    """The process umask (read without changing it for longer than a moment)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite``; check that its folder is writable.

    Args:
        path: file or directory that is about to be written.
        overwrite: allow replacing an existing file or directory.

    Returns:
        The path as a :class:`~pathlib.Path`.

    Raises:
        TfdeblendError: the path exists (and ``overwrite`` is false) or cannot be written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise TfdeblendError(f"{path} already exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise TfdeblendError(f"cannot write to {parent}: permission denied")
    if probe.exists() and not probe.is_dir():
        raise TfdeblendError(f"cannot write to {parent}: {probe} is not a directory")
    return path


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _host() -> str:
    """This machine's name, without dots or dashes (it goes into scratch file names)."""
    import socket

    return "".join(c for c in socket.gethostname() if c.isalnum()) or "host"


def scratch_prefix(path: str | os.PathLike) -> str:
    """Name prefix of this process's scratch files for ``path``: ``.NAME.<host>-<pid>.``."""
    return f".{Path(path).name}.{_host()}-{os.getpid()}."


def remove_stale_scratch(path: str | os.PathLike) -> list[Path]:
    """Remove scratch files and folders that killed processes left beside ``path``.

    Scratch names are ``.NAME.<host>-<pid>.<random><suffix>`` (:func:`scratch_prefix`); those
    written on this machine by a process that no longer runs are removed. Scratch of a live
    process (another run writing the same output) or of another machine (a job array on a
    shared file system) is left alone.

    Returns:
        The paths removed.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    removed = []
    if not parent.is_dir():
        return removed
    head = f".{path.name}.{_host()}-"
    for candidate in parent.iterdir():
        if not candidate.name.startswith(head):
            continue
        pid = candidate.name[len(head):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
            removed.append(candidate)
    return removed


def _place(tmp_path: Path, path: Path, overwrite: bool) -> None:
    """Move ``tmp_path`` onto ``path``; without ``overwrite``, never replace a file that
    appeared meanwhile (another process writing the same output)."""
    if overwrite:
        os.replace(tmp_path, path)
        return
    try:
        os.link(tmp_path, path)  # atomic, and fails when path exists
    except FileExistsError as err:
        raise TfdeblendError(
            f"{path} appeared while this run was writing it (another process?); it was not "
            "replaced: pass --overwrite to replace it"
        ) from err
    except OSError:  # a file system without hard links
        if path.exists():
            raise TfdeblendError(
                f"{path} appeared while this run was writing it (another process?); it was not "
                "replaced: pass --overwrite to replace it"
            ) from None
        os.replace(tmp_path, path)
        return
    tmp_path.unlink()


def _os_error(path: Path, err: OSError) -> TfdeblendError:
    return TfdeblendError(f"cannot write {path}: {err.strerror or err}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success.

    A reader never sees a half-written file: on any exception the temporary file is removed and
    ``path`` is left as it was. Stale temporary files of killed runs are removed first
    (:func:`remove_stale_scratch`).

    Args:
        path: the file to write.
        overwrite: replace ``path`` if it exists when the write ends; when false, a file that
            appeared meanwhile is kept and :class:`TfdeblendError` is raised.

    Raises:
        TfdeblendError: the folder cannot be written (any OS error), or ``path`` appeared
            meanwhile without ``overwrite``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_scratch(path)
        fd, tmp = tempfile.mkstemp(prefix=scratch_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise _os_error(path, err) from err
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        _place(tmp_path, path, overwrite)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(err, OSError) and not isinstance(err, TfdeblendError):
            raise _os_error(path, err) from err
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; move it onto ``path`` only on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_scratch(path)
        tmp_path = Path(
            tempfile.mkdtemp(prefix=scratch_prefix(path), suffix=".tmp", dir=path.parent)
        )
    except OSError as err:
        raise _os_error(path, err) from err
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp_path, path)
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise
