"""Files that survive interruption: append-only JSONL caches and whole-file atomic writes."""

import json
import os
import pathlib
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any


def read_jsonl(path: pathlib.Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL cache; a last line torn by a kill is ignored."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, start=1):
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if number != len(lines):
                raise ValueError(f"{path}:{number} is not valid JSON; delete the file to start over") from None


def append_jsonl(path: pathlib.Path, records: Iterable[dict[str, Any]]) -> None:
    """Appends records and syncs them to disk; first drops a torn last line, if any."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(end - 1)
            if f.read(1) != b"\n":
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
        f.write("".join(json.dumps(r) + "\n" for r in records).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def write_atomically(path: pathlib.Path, data: str | bytes) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
