"""Progress of long attributions: the path engine reports its rows as their passes finish.

A caller that wants to see progress (a notebook explaining a 2,048-token prompt, a
CLI) runs the work inside `scope(report)` or `bar()`. The engine calls `begin(phase,
rows)` before each phase of a computation (gradient rows, score-only rows) and
`advance(rows)` after each pass. Scopes are per thread (a `contextvars.ContextVar`);
outside any scope the calls do nothing.
"""

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol


class Report(Protocol):
    """Told about each phase and pass."""

    def begin(self, phase: str, rows: int) -> None: ...

    def advance(self, rows: int) -> None: ...

    def close(self) -> None: ...


_current: contextvars.ContextVar[Report | None] = contextvars.ContextVar("lit_sig_progress", default=None)


@contextlib.contextmanager
def scope(report: Report) -> Iterator[Report]:
    """Runs the body with `report` told about the engine's phases and passes."""
    token = _current.set(report)
    try:
        yield report
    finally:
        _current.reset(token)
        report.close()


def begin(phase: str, rows: int) -> None:
    report = _current.get()
    if report is not None:
        report.begin(phase, rows)


def advance(rows: int) -> None:
    report = _current.get()
    if report is not None:
        report.advance(rows)


class TqdmReport:
    """One tqdm bar per phase, counting rows."""

    def __init__(self, **tqdm_kwargs) -> None:
        self._kwargs = tqdm_kwargs
        self._bar = None

    def begin(self, phase: str, rows: int) -> None:
        import tqdm  # pylint: disable=import-outside-toplevel

        self.close()
        self._bar = tqdm.tqdm(total=rows, desc=phase, unit="row", dynamic_ncols=True, **self._kwargs)

    def advance(self, rows: int) -> None:
        if self._bar is not None:
            self._bar.update(rows)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def bar(**tqdm_kwargs) -> contextlib.AbstractContextManager[Report]:
    """`with progress.bar(): interpreter.run(...)` shows a tqdm bar of the rows of each phase."""
    return scope(TqdmReport(**tqdm_kwargs))
