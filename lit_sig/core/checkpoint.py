"""Score-only rows kept on disk as their passes end, so that a stopped run loses none of them.

Exact SIG of a 2,048-token prompt is 2,049 forward rows: hours on a CPU. Run it inside
`scope(path)` and every score-only row (exact SIG's rows, a path's endpoint rows) is
appended to the file at `path` when its pass ends; a later run in a scope of the same
file scores only the rows the file lacks, then finishes as if it had run at once:

    with checkpoint.scope("long_prompt.rows"):
        interpreter.run([example], model, None, config=config)   # stop it any time, run again

A row's key hashes everything its score depends on: the scorer's `model_fingerprint`
(its weights, hashed once per scope) and `score_fingerprint` of the example (settings,
targets), the example's embeddings, baseline and groups, and the row's group and alpha. A row of another
model, example or baseline never matches, so one file may serve many runs. Gradient
rows are not kept: their sums are one pass's work at a time.

Writes are flushed after each pass (a killed process loses at most the pass it was
in). A torn last line (a process killed while writing) is ignored; any other line
that cannot be read is an error, not a silent restart. Scopes are per thread.
"""

import contextlib
import contextvars
import hashlib
import json
import pathlib
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch

FORMAT = "lit_sig row checkpoint 1"
_current: contextvars.ContextVar["RowCheckpoint | None"] = contextvars.ContextVar("lit_sig_checkpoint", default=None)


class CheckpointError(Exception):
    """A checkpoint file cannot be used (not one of ours, damaged, or a scorer that cannot be fingerprinted)."""


class Fingerprinted(Protocol):
    """A scorer whose rows can be kept: it names what its score of an example depends on."""

    def model_fingerprint(self) -> bytes:
        """Bytes that change whenever the model's weights do (read once per scope: hashing them takes a while)."""

    def score_fingerprint(self, key: Any) -> bytes:
        """Bytes that change whenever F of `key`'s rows could besides the weights (settings, targets)."""


class RowCheckpoint:
    """The rows of one file: read once, appended to as rows are scored."""

    def __init__(self, path: str | pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        self._scores: dict[tuple[str, int, float], float] = {}
        self._models: dict[int, tuple[Any, bytes]] = {}  # id(scorer) -> (scorer, its model_fingerprint)
        self._lock = threading.Lock()
        self.rows_read = self.rows_written = 0
        if self.path.exists() and self.path.stat().st_size:
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"format": FORMAT}) + "\n")
        self._file = self.path.open("a")

    def _read(self) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # A torn last line (killed mid-write) is dropped.
        lines = complete.decode("utf-8", errors="replace").split("\n")[:-1]
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise CheckpointError(
                f"{self.path} is not a lit_sig row checkpoint (its first line is not {FORMAT!r}); give another path."
            )
        for number, line in enumerate(lines[1:], start=2):
            self._add_line(line, number)
        if len(complete) < len(data):
            with self.path.open("r+b") as f:  # Appends start on a fresh line.
                f.truncate(len(complete))

    def _add_line(self, line: str, number: int) -> None:
        try:
            row = json.loads(line)
            self._scores[(row["problem"], int(row["group"]), float(row["alpha"]))] = float(row["score"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{self.path}, line {number}: not a row ({e}); remove the file to start over.") from e
        self.rows_read += 1

    def lookup(self, problem: str, group: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(known [R] bool, scores [R] float64, NaN where unknown)` of rows (group, alpha) of `problem`."""
        keys = zip(group.tolist(), alpha.tolist())
        scores = torch.tensor([self._scores.get((problem, g, a), float("nan")) for g, a in keys], dtype=torch.float64)
        return ~scores.isnan(), scores

    def record(self, problem: str, group: torch.Tensor, alpha: torch.Tensor, scores: torch.Tensor) -> None:
        """Appends rows (group [r], alpha [r]) of `problem` with their scores [r], and flushes."""
        rows = zip(group.tolist(), alpha.tolist(), scores.double().tolist())
        text = "".join(json.dumps({"problem": problem, "group": g, "alpha": a, "score": s}) + "\n" for g, a, s in rows)
        with self._lock:
            self._file.write(text)
            self._file.flush()
            self.rows_written += len(scores)

    def close(self) -> None:
        self._file.close()

    def problem_key(self, scorer: Any, key: Any, x: torch.Tensor, baseline: torch.Tensor, groups: torch.Tensor) -> str:
        """The hash of everything an example's score-only rows depend on (see the module docstring)."""
        if not all(hasattr(scorer, name) for name in ("model_fingerprint", "score_fingerprint")):
            raise CheckpointError(
                f"{type(scorer).__name__} has no model_fingerprint and score_fingerprint: its rows cannot be kept."
            )
        with self._lock:
            if id(scorer) not in self._models:
                self._models[id(scorer)] = (scorer, scorer.model_fingerprint())
            model = self._models[id(scorer)][1]
        digest = hashlib.blake2b(model + scorer.score_fingerprint(key), digest_size=20)
        for t in (x, baseline, groups):
            digest.update(tensor_bytes(t))
        return digest.hexdigest()


def tensor_bytes(t: torch.Tensor | np.ndarray) -> bytes:
    """A tensor's dtype, shape and contents as bytes."""
    if isinstance(t, np.ndarray):
        return f"{t.dtype}{t.shape}".encode() + np.ascontiguousarray(t).tobytes()
    t = t.detach().cpu().contiguous()
    return f"{t.dtype}{tuple(t.shape)}".encode() + t.reshape(-1).view(torch.uint8).numpy().tobytes()


@contextlib.contextmanager
def scope(path: str | pathlib.Path) -> Iterator[RowCheckpoint]:
    """Runs the body with score-only rows read from and appended to the checkpoint file at `path`."""
    store = RowCheckpoint(path)
    token = _current.set(store)
    try:
        yield store
    finally:
        _current.reset(token)
        store.close()


def active() -> RowCheckpoint | None:
    """The current scope's checkpoint, if any."""
    return _current.get()
