"""The one path every artifact write goes through, and the readers of JSON and torch files.

Writes are atomic (a temp file in the destination's directory, then ``os.replace``), so an existing file is
either left as it was or replaced by a complete new one. Commands check every destination with
:func:`check_output` *before* long work starts (writable, not a directory, not one of the command's inputs),
and a command that writes several files stages them in one :class:`Outputs`: nothing is renamed into place
unless every file was written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from dsa.errors import ArtifactError, OutputError


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return (stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH) & ~mask


def _why(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


# ------------------------------------------------------------------------------------------ checking outputs


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output(
    path: str | Path | None,
    what: str = "output",
    inputs: Iterable[tuple[str, str | Path | None]] = (),
) -> Path:
    """Check that ``path`` can be written, before any work is done: not empty, not a directory, its directory
    exists or can be created and accepts a new file (probed with a real temp file, so read-only file systems
    and permissions are caught), and not the same file as any of ``inputs`` (``(option, path)`` pairs).
    Raises :class:`OutputError` naming ``what``; returns the path."""
    if path is None or str(path).strip() == "" or str(path) == ".":
        raise OutputError(f"{what}: an empty path was given; give a file path")
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file path (e.g. {path / 'out.json'})")
    for option, other in inputs:
        if other is not None and _same_file(path, Path(other)):
            raise OutputError(f"{what} {path} is also the input {option}; writing it would destroy the input")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"cannot write {what} {path}: the existing file is not writable")
    # the deepest existing ancestor must be a directory that accepts a new file
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".dsa-write-check.", dir=parent)
    except OSError as e:
        raise OutputError(f"cannot write {what} {path}: {parent} does not accept new files ({_why(e)})") from e
    os.close(fd)
    Path(probe).unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------------ atomic writes


def _temp_beside(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {_why(e)}") from e
    os.close(fd)
    return Path(tmp)


def atomic_write_with(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to write a temp file beside ``path``, then move it into place; on any failure the
    temp file is removed and ``path`` is untouched."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory")
    tmp = _temp_beside(path)
    try:
        write(tmp)
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600; a saved artifact gets the usual mode
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {_why(e)}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write_with(path, write)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch

    atomic_write_with(path, lambda tmp: torch.save(obj, tmp))


class Outputs:
    """Several files written all-or-nothing: :meth:`stage` hands out a temp path beside each destination;
    leaving the ``with`` block normally moves every staged file into place, an exception removes them all and
    leaves every destination as it was.

    >>> with Outputs() as outs:                                   # doctest: +SKIP
    ...     save_checkpoint(outs.stage("merged.pt"))
    ...     save_onnx(outs.stage("merged.onnx"))                  # fails: merged.pt is not replaced either
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def stage(self, path: str | Path) -> Path:
        path = Path(path)
        if any(_same_file(path, final) for _, final in self._staged):
            raise OutputError(f"{path} is given twice as an output")
        tmp = _temp_beside(path)
        self._staged.append((tmp, path))
        return tmp

    def discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()

    def commit(self) -> None:
        final = Path()
        try:
            for tmp, _ in self._staged:
                os.chmod(tmp, _umask_mode())
            for tmp, final in self._staged:
                os.replace(tmp, final)
        except OSError as e:
            self.discard()
            raise OutputError(f"cannot write {final}: {_why(e)}") from e
        self._staged.clear()

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


@contextlib.contextmanager
def staged(path: str | Path) -> Iterator[Path]:
    """One file written all-or-nothing: ``with staged(p) as tmp: write(tmp)``."""
    with Outputs() as outs:
        yield outs.stage(path)


# ------------------------------------------------------------------------------------------ reading


def _check_input_file(path: Path, what: str, error: type[Exception]) -> None:
    if path.is_dir():
        raise error(f"{what} {path} is a directory; give the file")
    if not path.exists():
        raise error(f"{what} {path} does not exist")
    if not os.access(path, os.R_OK):
        raise error(f"{what} {path} is not readable (permission denied)")


def read_json(path: str | Path, what: str, error: type[Exception] = ArtifactError) -> Any:
    """Parse a JSON artifact, raising ``error`` with the position of a syntax error."""
    path = Path(path)
    _check_input_file(path, what, error)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not a text file (a JSON {what} was expected)") from e
    except OSError as e:
        raise error(f"{what} {path} cannot be read: {_why(e)}") from e


def read_torch(path: str | Path, what: str = "checkpoint", error: type[Exception] = ArtifactError) -> Any:
    """``torch.load(weights_only=True)`` with one-line messages: missing, a directory, not a torch file, or a
    pickle with objects other than tensors (which dsa will not execute)."""
    import pickle

    import torch

    path = Path(path)
    _check_input_file(path, what, error)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if zipfile.is_zipfile(path):
            raise error(
                f"{what} {path} holds Python objects other than tensors and plain containers; dsa loads only "
                "weights (torch.load weights_only=True) and will not run code from a file: save a state_dict "
                "(torch.save(model.state_dict(), path))"
            ) from e
        raise error(f"{what} {path} is not a PyTorch file (torch.save); give a checkpoint") from e
    except Exception as e:  # torch raises many types for damaged or foreign files (KeyError for a text file)
        if not zipfile.is_zipfile(path):
            raise error(f"{what} {path} is not a PyTorch file (torch.save); give a checkpoint") from e
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise error(f"{what} {path} is a damaged PyTorch file ({first[:120]})") from e


# ------------------------------------------------------------------------------------------ C-level output


_KINETO_LINE = re.compile(r"^(USDT|STAGE|ERROR|WARNING|INFO):\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [\d:]+ \S+\.cpp:\d+\]")


@contextlib.contextmanager
def without_profiler_noise(fd: int = 2) -> Iterator[None]:
    """Drop the lines torch.profiler's C++ backend (kineto) writes straight to file descriptor ``fd`` — "USDT ...
    profiler_start", "gpuGetDeviceCount failed" on machines without a GPU — and pass every other byte through."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(fd)
    except OSError:  # no such descriptor
        yield
        return
    with tempfile.TemporaryFile() as capture:
        try:
            os.dup2(capture.fileno(), fd)
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            kept = b"".join(
                line
                for line in capture.read().splitlines(keepends=True)
                if not _KINETO_LINE.match(line.decode("utf-8", "replace"))
            )
            if kept:
                with contextlib.suppress(OSError):
                    os.write(fd, kept)
