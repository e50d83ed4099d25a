"""Admission of heavy requests by when they are expected to finish, not by queue length alone.

`Throughput` learns the token-rows per second that the heavy slots deliver
together, from finished requests and from requests cut off at their deadline.
`AdmissionGate` runs at most `slots` heavy requests at once, in arrival order,
sharing that throughput (each of k running requests gets 1/k of it: they share
the same cores), and admits a new request only if, by a simulation of the
running and queued work, it starts within `max_wait_s` and finishes within
`SAFETY` of its deadline without pushing an admitted request past its own (an
idle server takes any request, so a cold estimate cannot lock work out; one
that even alone would miss its deadline at the best rate measured only after a
deadline's time without heavy work, in case the machine got faster).
Otherwise it refuses at once with 503 and Retry-After, also when the request
alone would not finish before its deadline even at the best throughput
measured here (the message says so: ask for less work). These answers depend
on measured speed, which changes; 413 stays for the fixed limits.
"""

import collections
import contextlib
import dataclasses
import http
import math
import threading
import time
from collections.abc import Callable, Iterator

from lit_sig.core import cancellation
from lit_sig.serving.server_limits import RequestError

# Token-rows per second, all slots together, before any measurement: a slow CPU's, so the first requests are
# not promised more than the machine gives. The first finished heavy request replaces it.
PRIOR_TOKEN_ROWS_PER_S = 1_000.0
OVERHEAD_S = 0.05  # Per request, whatever its cost.
SAFETY = 0.8  # A request is admitted only if it is expected to finish within this share of its deadline.
_MIN_SAMPLE_S = 0.2  # Shorter requests say more about the overhead than about throughput.
_NEW_WEIGHT = 0.3  # Of a new sample in the moving average.
_POLL_S = 0.25


class Throughput:
    """Token-rows per second that the heavy slots deliver together: a moving average over measured requests.

    A request that did `work` token-rows in `seconds` while on average `sharing`
    heavy requests ran (itself included) saw `work / seconds`; the slots together
    delivered about `sharing` times that. `peak` is the best such rate measured.
    """

    def __init__(self, prior: float = PRIOR_TOKEN_ROWS_PER_S):
        self.rate = prior
        self.peak = math.nan  # Unknown until a request has finished.
        self.samples = 0

    def record(self, work: float, seconds: float, sharing: float = 1.0, bound: bool = False) -> None:
        """Counts `work` token-rows done in `seconds` in a slot, `sharing` requests running on average.

        A request cut off with its work unknown passes its full cost and `bound=True`: the rate was then at
        most the sample, and the estimate drops to it if it was higher.
        """
        if work <= 0 or seconds < _MIN_SAMPLE_S:
            return
        sample = work * max(sharing, 1.0) / max(seconds - OVERHEAD_S, _MIN_SAMPLE_S / 2)
        blended = sample if self.samples == 0 else (1 - _NEW_WEIGHT) * self.rate + _NEW_WEIGHT * sample
        self.rate = min(blended, sample) if bound else blended
        if not bound:
            self.peak = sample if math.isnan(self.peak) else max(self.peak, sample)
        self.samples += 1

    def seconds(self, cost: float, sharing: float = 1.0) -> float:
        """Expected seconds for `cost` token-rows with `sharing` requests running at once."""
        return OVERHEAD_S + cost * sharing / self.rate


class RowsDone:
    """A `lit_sig.core.progress` report that counts the path engine's rows: the share of a request's work done."""

    def __init__(self):
        self._planned = 0
        self._done = 0

    def begin(self, phase: str, rows: int) -> None:
        self._planned += rows

    def advance(self, rows: int) -> None:
        self._done += rows

    def close(self) -> None:
        pass

    def fraction(self) -> float | None:
        """Rows done over rows planned so far (None if the work reports no rows)."""
        return min(1.0, self._done / self._planned) if self._planned else None


@dataclasses.dataclass(eq=False)
class Ticket:
    """A heavy request: its cost, when it must finish (monotonic seconds), and what it has done."""

    cost: int
    due: float = math.inf
    started: float = math.nan
    shared_s: float = 0.0  # Integral of the number of running requests over its running time.
    modelled_done: float = 0.0  # Token-rows done by the throughput model, where no progress is reported.
    rows: RowsDone = dataclasses.field(default_factory=RowsDone)

    def done(self) -> float:
        """Token-rows done so far: the rows it reported, else the model's estimate."""
        fraction = self.rows.fraction()
        return self.cost * fraction if fraction is not None else min(self.modelled_done, self.cost)


@dataclasses.dataclass(frozen=True)
class Forecast:
    """When each ticket would start and finish, in seconds from now."""

    start_s: dict[Ticket, float]
    finish_s: dict[Ticket, float]


def simulate(running: list[Ticket], waiting: list[Ticket], slots: int, rate: float) -> Forecast:
    """Runs the tickets' remaining work on `slots` slots sharing `rate` token-rows/s, queued ones in order."""
    overhead = OVERHEAD_S * rate
    remaining = {t: max(t.cost - t.done(), 0.0) + overhead for t in running}
    remaining |= {t: t.cost + overhead for t in waiting}
    active, queue = list(running), collections.deque(waiting)
    start_s = dict.fromkeys(running, 0.0)
    finish_s: dict[Ticket, float] = {}
    now = 0.0
    while queue and len(active) < slots:
        start_s[queue[0]] = now
        active.append(queue.popleft())
    while active:
        share = rate / len(active)
        smallest = min(remaining[t] for t in active)
        now += smallest / share
        ending = [t for t in active if remaining[t] - smallest <= 1e-9 * smallest]
        for ticket in active:
            remaining[ticket] -= smallest
        for ticket in ending:
            finish_s[ticket] = now
            active.remove(ticket)
        while queue and len(active) < slots:
            start_s[queue[0]] = now
            active.append(queue.popleft())
    return Forecast(start_s, finish_s)


class AdmissionGate:
    """At most `slots` heavy requests at once, in arrival order, admitted by when they are expected to finish.

    A request is refused at once when `queue` are already waiting, when its
    expected wait for a slot exceeds `max_wait_s`, or when it (or an admitted
    request) is not expected to finish within `SAFETY` of its deadline.
    """

    def __init__(
        self,
        slots: int,
        queue: int,
        max_wait_s: float,
        throughput: Throughput | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._slots, self._queue, self._max_wait_s = slots, queue, max_wait_s
        self.throughput = throughput or Throughput()
        self._clock = clock
        self._cond = threading.Condition()
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._running: list[Ticket] = []
        self._accounted = clock()
        self._idle_since = self._accounted  # When the last heavy request left (or the gate was made).

    @property
    def admitted(self) -> int:
        """Heavy requests running or queued now."""
        with self._cond:
            return len(self._running) + len(self._waiting)

    def expected_wait_s(self) -> float:
        """Seconds a request arriving now would wait for a slot, by the measured throughput."""
        with self._cond:
            self._account()
            return self._wait_s()

    def _wait_s(self) -> float:
        probe = Ticket(0)
        return self._forecast(probe).start_s[probe]

    def _account(self) -> None:
        """Brings each running ticket's sharing and modelled work up to now."""
        now = self._clock()
        elapsed, self._accounted = now - self._accounted, now
        count = len(self._running)
        for ticket in self._running:
            ticket.shared_s += count * elapsed
            ticket.modelled_done += self.throughput.rate / count * elapsed

    def _forecast(self, new: Ticket | None) -> Forecast:
        return simulate(self._running, [*self._waiting, *([new] if new else [])], self._slots, self.throughput.rate)

    def _refusal(self, new: Ticket, now: float) -> RequestError | None:
        """Why `new` may not join the queue now (a 503 RequestError), else None."""
        deadline_s = new.due - now
        alone_s = OVERHEAD_S + new.cost / self.throughput.peak  # NaN (never refused) before any measurement.
        idle = not self._running and not self._waiting
        # Retried once the server has been idle a deadline long (the machine may have got faster since).
        retry_s = max(0.0, self._idle_since + deadline_s - now) if idle else deadline_s
        if alone_s > deadline_s and retry_s > 0:  # Between SAFETY and 1, tried only when idle.
            return _busy(
                retry_s,
                f"this request ({new.cost:,} token-rows) would take about {alone_s:.0f} s even alone at the best"
                f" throughput measured here ({self.throughput.peak:,.0f} token-rows/s), past its {deadline_s:.0f} s"
                " deadline. Send fewer or shorter inputs or ask for less work (Interpolation steps, samples), or",
                {"expected_s": alone_s, "deadline_s": deadline_s},
            )
        if len(self._waiting) >= self._queue and len(self._running) >= self._slots:
            wait_s = self._wait_s()
            return _busy(wait_s, f"{self._queue} heavy requests are waiting for a slot", {"expected_wait_s": wait_s})
        if idle:
            return None  # An idle server tries whatever is not over the limits, and so learns its throughput.
        without = self._forecast(None)
        forecast = self._forecast(new)
        wait_s, finish_s = forecast.start_s[new], forecast.finish_s[new]
        details = {"expected_wait_s": wait_s, "expected_s": finish_s, "deadline_s": deadline_s}
        if wait_s > self._max_wait_s:
            return _busy(
                wait_s - self._max_wait_s,
                f"this request would wait about {wait_s:.0f} s for a slot (at most {self._max_wait_s:g})",
                details,
            )
        if finish_s > SAFETY * deadline_s:
            return _busy(
                finish_s - SAFETY * deadline_s,
                f"this request would finish in about {finish_s:.0f} s ({wait_s:.0f} s for a slot, then"
                f" {new.cost:,} token-rows at {self.throughput.rate:,.0f} token-rows/s shared with the others),"
                f" past {SAFETY:.0%} of its {deadline_s:.0f} s deadline",
                details,
            )
        # Running beside the others must not push one that would finish in time past its deadline.
        late_s = max(
            (
                forecast.finish_s[t] - (t.due - now) * SAFETY
                for t in [*self._running, *self._waiting]
                if without.finish_s[t] <= (t.due - now) * SAFETY < forecast.finish_s[t]
            ),
            default=None,
        )
        if late_s is not None:
            return _busy(late_s, "running it now would make an admitted request miss its deadline", details)
        return None

    @contextlib.contextmanager
    def admit(self, cost: int, should_stop: cancellation.StopCheck, due: float = math.inf) -> Iterator[Ticket]:
        """Runs the body in a slot; raises a 503 RequestError at once if refused, Cancelled if stopped while queued.

        Args:
            cost: the request's token-rows.
            should_stop: consulted while it waits.
            due: the clock's time at which its deadline passes.

        Yields:
            Its ticket; the body reports its rows to `ticket.rows` (a `lit_sig.core.progress` report).
        """
        ticket = Ticket(cost, due)
        with self._cond:
            self._account()
            if refusal := self._refusal(ticket, self._clock()):
                raise refusal
            self._waiting.append(ticket)
            try:
                while not (self._waiting[0] is ticket and len(self._running) < self._slots):
                    self._cond.wait(_POLL_S)
                    if reason := should_stop():
                        raise cancellation.Cancelled(reason)
            except BaseException:
                self._waiting.remove(ticket)
                self._note_idle()
                self._cond.notify_all()
                raise
            self._account()
            self._waiting.popleft()
            ticket.started = self._clock()
            self._running.append(ticket)
        finished = False
        try:
            yield ticket
            finished = True
        finally:
            with self._cond:
                self._account()
                self._running.remove(ticket)
                self._note_idle()
                self._learn(ticket, finished)
                self._cond.notify_all()

    def _note_idle(self) -> None:
        if not self._running and not self._waiting:
            self._idle_since = self._clock()

    def _learn(self, ticket: Ticket, finished: bool) -> None:
        elapsed = self._clock() - ticket.started
        sharing = ticket.shared_s / elapsed if elapsed > 0 else 1.0
        if finished:
            self.throughput.record(ticket.cost, elapsed, sharing)
        elif (fraction := ticket.rows.fraction()) is not None:
            self.throughput.record(ticket.cost * fraction, elapsed, sharing)
        elif elapsed > self.throughput.seconds(ticket.cost, sharing):
            # Stopped past its expected time (a deadline): its rate was at most cost / elapsed.
            self.throughput.record(ticket.cost, elapsed, sharing, bound=True)


def _busy(retry_s: float, why: str, details: dict[str, float]) -> RequestError:
    retry = max(1, math.ceil(retry_s))
    return RequestError(
        http.HTTPStatus.SERVICE_UNAVAILABLE,
        f"The server is busy: {why}; retry in {retry} s.",
        {"Retry-After": str(retry)},
        details={k: round(v, 1) for k, v in details.items()} | {"retry_after_s": retry},
    )
