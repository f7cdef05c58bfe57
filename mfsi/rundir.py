"""Run-directory files, all written atomically (temp file + rename), stage markers, the lock.

A reader never sees a half-written file: a killed run leaves either the old file or
the new one, which is what makes resuming safe. Each stage of a run ends by writing its
done marker (`seal`): the size and SHA-256 of every file the stage wrote (and the record
count of a .jsonl) and of every file it read. On resume, `damage` says whether a finished
stage is still intact and its inputs unchanged. `lock` keeps a second process out of a
run directory in use. Reading names the file (and line) of a binary or undecodable file;
written files get the mode the umask gives.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mfsi.errors import DataError, MfsiError

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # the process's, read once: os.umask can only be read by setting it


def temporary(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A new file beside path, to be renamed onto it once written: (descriptor, its path). Its
    mode is what open() would give under the umask (mkstemp's 0600 would hide results from
    the group)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.fchmod(fd, 0o666 & ~UMASK)
    return fd, tmp


def write_text(path: Path, text: str) -> None:
    fd, tmp = temporary(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: Path, records: Iterable[Any]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_text(path: Path) -> str:
    """A text file's contents (UTF-8; a leading BOM dropped, CRLF line ends kept). DataError
    naming the file, and the line, for a binary file or bytes that are not UTF-8."""
    data = Path(path).read_bytes()
    _refuse_binary(path, data)
    return _decode(path, data)


def _refuse_binary(path: Path, data: bytes) -> None:
    if b"\0" in data:
        raise DataError(f"{path}: a binary file (it holds NUL bytes), not text")


def _decode(path: Path, data: bytes, line: int | None = None) -> str:
    """data as UTF-8 text, a BOM dropped; DataError naming path and the line (the given
    one: data is that line) where it is not."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = line or data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x})") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: damaged, not valid JSON ({e})") from None


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, JSON value or the DataError naming file:line) for each non-blank line of
    a JSON-lines file; lines end in LF or CRLF, a BOM is dropped. A binary file is one error."""
    data = Path(path).read_bytes()
    try:
        _refuse_binary(path, data)
    except DataError as e:
        yield 1, e
        return
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = _decode(path, raw, number)
            if line.strip():
                yield number, json.loads(line)
        except DataError as e:
            yield number, e
        except json.JSONDecodeError as e:
            yield number, DataError(f"{path}:{number}: not valid JSON ({e.msg})")


def read_jsonl(path: Path, skip_damaged: bool = False) -> list[Any]:
    """The records of a JSONL file. A damaged line raises DataError naming file:line, or is
    left out with a warning when skip_damaged."""
    records = []
    for _, record in json_lines(path):
        if isinstance(record, DataError):
            if not skip_damaged:
                raise record
            log.warning("%s: left out", record)
        else:
            records.append(record)
    return records


def append_jsonl(path: Path, record: Any) -> None:
    """Append one record by rewriting the file atomically (files here are small); damaged
    lines are dropped, with a warning each."""
    path = Path(path)
    write_jsonl(path, [*(read_jsonl(path, skip_damaged=True) if path.exists() else []), record])


def copy_folder(source: Path, target: Path) -> None:
    """Copy a folder atomically: into a temporary sibling, then renamed into place."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)  # a copy cut short, or damaged since
    tmp.rename(target)


# --- stage markers -------------------------------------------------------------------------


def _files(paths: Iterable[Path]) -> list[Path]:
    """The files among paths, folders replaced by every file in them."""
    found = []
    for path in map(Path, paths):
        found += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return found


def describe(path: Path) -> dict[str, Any]:
    """What a marker records of one file: size, SHA-256 and, for .jsonl, the record count."""
    stat = Path(path).stat()
    return _describe(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4096)
def _describe(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """describe, once per file version: an adapter is read by several stages' checks."""
    with open(path, "rb") as f:
        entry: dict[str, Any] = {"bytes": os.fstat(f.fileno()).st_size}
        entry["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
    if path.endswith(".jsonl"):  # small text files: a second read is cheap
        entry["records"] = Path(path).read_bytes().count(b"\n")
    return entry


def done_marker(output: Path) -> Path:
    """Where the marker of the stage that writes output (a file or folder) lives:
    iter_0/debate_eval.jsonl -> iter_0/debate_eval.done.json, iter_1/data -> iter_1/data.done.json."""
    return Path(output).with_suffix(".done.json")


def seal(marker: Path, outputs: Iterable[Path], inputs: Iterable[Path] = ()) -> None:
    """Mark a stage done, after its outputs are written; inputs are what it read (files or
    folders, like outputs), so that an input redone differently makes this stage stale."""
    home = Path(marker).parent

    def entries(paths: Iterable[Path]) -> dict[str, dict]:
        return {os.path.relpath(p, home): describe(p) for p in _files(paths)}

    write_json(marker, {"outputs": entries(outputs), "inputs": entries(inputs)})


def damage(marker: Path) -> str | None:
    """None if the stage marked done by marker is intact and its inputs unchanged; else what
    is wrong, naming each file."""
    try:
        recorded = read_json(marker)
        outputs, inputs = recorded["outputs"], recorded["inputs"]
    except (DataError, KeyError, TypeError):
        return f"{marker}: the stage's done marker is damaged"
    home, problems = Path(marker).parent, []
    for name, expected in outputs.items():
        path = Path(os.path.normpath(home / name))
        found = describe(path) if path.is_file() else None
        if found is None:
            problems.append(f"{path}: missing")
        elif found.get("records") != expected.get("records"):
            problems.append(f"{path}: {found['records']} records where {expected['records']} were written")
        elif found != expected:
            problems.append(
                f"{path}: damaged ({found['bytes']} bytes where {expected['bytes']} were written)"
            )
    for name, expected in inputs.items():
        path = Path(os.path.normpath(home / name))
        if not path.is_file() or describe(path) != expected:
            problems.append(f"{marker}: its input {path} changed since (that stage was redone)")
    return "; ".join(problems) or None


# --- lock ----------------------------------------------------------------------------------


@contextmanager
def lock(run_dir: Path) -> Iterator[None]:
    """Hold run_dir for this process. Another process stops at once, naming the holder; the
    operating system drops the lock when its holder dies, so a stale lock file is taken over.
    A directory made here that holds nothing but the lock when the run stops is removed, so a
    run that fails its start-up checks leaves nothing behind."""
    run_dir = Path(run_dir)
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    f = open(path, "a+", encoding="utf-8", errors="replace")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise MfsiError(
            f"{run_dir} is in use by {holder}: wait for it to end or stop it; a second run "
            "of one directory would redo its work"
        ) from None
    f.seek(0)
    if previous := f.read().strip():
        log.warning("%s: taking over from %s, which ended without releasing it", path, previous)
    f.truncate(0)
    f.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    try:
        yield
    finally:
        f.truncate(0)  # empty: released cleanly
        f.close()  # closing releases the lock
        if made and [p.name for p in run_dir.iterdir()] == [".lock"]:
            path.unlink()
            run_dir.rmdir()
