"""Cooperative cancellation of long attributions (a deadline, a client that left).

The path engine calls `check()` before every model pass. A caller that wants to
bound the work (the LIT server, say) runs it inside `scope(should_stop)`: as soon
as `should_stop()` returns a reason string, the next `check()` raises `Cancelled`
with it. Scopes are per thread (a `contextvars.ContextVar`), so concurrent
requests don't see each other's scopes; outside any scope `check()` does nothing.
"""

import contextlib
import contextvars
from collections.abc import Callable, Iterator

StopCheck = Callable[[], str | None]
"""Returns None to go on, or the reason to stop (e.g. "deadline of 60 s passed")."""

_current: contextvars.ContextVar[StopCheck | None] = contextvars.ContextVar("lit_sig_stop_check", default=None)


class Cancelled(Exception):
    """The work was stopped by its scope's check; the message says why."""


@contextlib.contextmanager
def scope(should_stop: StopCheck) -> Iterator[None]:
    """Runs the body with `should_stop` consulted at every `check()`."""
    token = _current.set(should_stop)
    try:
        yield
    finally:
        _current.reset(token)


def check() -> None:
    """Raises `Cancelled` if the current scope says to stop."""
    should_stop = _current.get()
    if should_stop is not None and (reason := should_stop()):
        raise Cancelled(reason)
