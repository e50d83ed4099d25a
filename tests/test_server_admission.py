"""The admission gate's arithmetic, on a fake clock: shared throughput, expected finish, learning, refusals.

Every expected time is worked out by hand from processor sharing: k running
requests each get 1/k of the throughput; each request also costs
`OVERHEAD_S` x throughput token-rows.
"""

import http
import math

import pytest

from lit_sig.core import cancellation
from lit_sig.serving import server_admission
from lit_sig.serving.server_admission import OVERHEAD_S, AdmissionGate, Throughput, Ticket, simulate
from lit_sig.serving.server_limits import RequestError


class FakeClock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def never() -> None:
    return None


def gate_at(rate: float, slots: int = 2, max_wait_s: float = 1e6) -> tuple[AdmissionGate, FakeClock]:
    clock = FakeClock()
    return AdmissionGate(slots, 16, max_wait_s, Throughput(prior=rate), clock=clock), clock


def test_simulation_shares_the_throughput_between_running_requests():
    """100 token-rows/s on 2 slots (overhead 5 token-rows each): A (1,000) and B (2,000) each run at 50/s; A ends
    at 1,005 / 50 = 20.1 s. C (500) then starts and shares with B: C ends 505 / 50 = 10.1 s later (30.2 s);
    B had 2,005 - 1,005 - 505 = 495 left, alone at 100/s: 4.95 s more (35.15 s)."""
    a, b, c = Ticket(1_000), Ticket(2_000), Ticket(500)
    forecast = simulate([a, b], [c], slots=2, rate=100.0)
    assert OVERHEAD_S * 100 == pytest.approx(5)
    assert forecast.start_s == pytest.approx({a: 0, b: 0, c: 20.1})
    assert forecast.finish_s == pytest.approx({a: 20.1, c: 30.2, b: 35.15})


def test_simulation_of_huge_and_equal_costs_ends_them_together():
    """Two of 10^12 token-rows at 10^6/s share: both end at 2 x (10^12 + 5 x 10^4) / 10^6 s; float rounding
    of the remainders does not leave one running a step longer."""
    a, b, c = Ticket(10**12), Ticket(10**12), Ticket(3)
    forecast = simulate([a, b], [c], slots=2, rate=1e6)
    both = 2 * (1e12 + 5e4) / 1e6
    assert forecast.finish_s[a] == forecast.finish_s[b] == pytest.approx(both, rel=1e-12)
    assert forecast.start_s[c] == forecast.finish_s[a]


def test_simulation_counts_the_work_already_done():
    """A has reported a quarter of its rows: 750 + 5 left, alone at 100/s: 7.55 s."""
    a = Ticket(1_000)
    a.rows.begin("gradient rows", 400)
    a.rows.advance(100)
    assert simulate([a], [], slots=2, rate=100.0).finish_s[a] == pytest.approx(7.55)


def test_expected_wait_is_the_time_to_the_first_free_slot():
    gate, clock = gate_at(100.0)
    with gate.admit(1_000, never), gate.admit(2_000, never):
        assert gate.expected_wait_s() == pytest.approx(20.1)
        clock.now += 10  # 500 token-rows each done (by the model: nothing reported): A has 505 left at 50/s.
        assert gate.expected_wait_s() == pytest.approx(10.1)
    assert gate.expected_wait_s() == 0


def test_a_request_that_cannot_finish_before_its_deadline_is_refused_with_its_times():
    """A (1,000) runs; B (1,000), due in 30 s, would share: both end at 1,005 / 50 = 20.1 s, within 0.8 x 30 = 24:
    admitted. C (500) due in 30 s would wait 20.1 s for a slot, then run alone: it ends at 20.1 + 5.05 =
    25.15 s > 24: refused, retry in ceil(25.15 - 24) = 2 s; due in 40 s (32) it would be admitted."""
    gate, clock = gate_at(100.0)
    with gate.admit(1_000, never), gate.admit(1_000, never, due=clock.now + 30):
        with pytest.raises(RequestError) as refused:
            with gate.admit(500, never, due=clock.now + 30):
                pytest.fail("admitted")
        assert refused.value.status == http.HTTPStatus.SERVICE_UNAVAILABLE
        assert refused.value.headers == {"Retry-After": "2"}
        assert refused.value.details == pytest.approx(
            {"expected_wait_s": 20.1, "expected_s": 25.15, "deadline_s": 30.0, "retry_after_s": 2}, abs=0.051
        )
        assert "deadline" in str(refused.value) and "about 25 s" in str(refused.value)
        assert gate._refusal(Ticket(500, clock.now + 40), clock.now) is None
        assert gate.admitted == 2  # Nothing was queued.


def test_a_request_that_would_push_an_admitted_one_past_its_deadline_is_refused():
    """A (2,000), due in 30 s (24 s with the margin), alone ends at 20.05 s. Beside B (1,000): B ends at
    1,005 / 50 = 20.1 s, A has 2,005 - 1,005 = 1,000 left at 100/s: 30.1 s > 24. B is refused (retry in 7 s)
    although it would itself finish in time."""
    gate, clock = gate_at(100.0)
    with gate.admit(2_000, never, due=clock.now + 30):
        refusal = gate._refusal(Ticket(1_000, clock.now + 1_000), clock.now)
        assert refusal is not None and refusal.headers == {"Retry-After": "7"}
        assert "miss its deadline" in str(refusal)
        # 8 s later A has done 800 alone (1,205 left, due in 22 s: 17.6 s). Beside a C of 100 (105 at 50/s:
        # 2.1 s), A ends at 2.1 + 1,100 / 100 = 13.1 s: C is admitted.
        clock.now += 8
        assert gate._refusal(Ticket(100, clock.now + 1_000), clock.now) is None


def test_a_request_too_big_for_the_deadline_even_alone_is_refused_on_an_idle_server_too():
    """Best rate measured: 10,000 token-rows/s. 500,000 token-rows alone: 50.05 s > 50 s: 503, even on an idle
    server, until it has been idle a deadline long (retry in 50 s; 20 s later, in 30 s): the measured speed may
    change, and is measured again by trying; the message asks for less work. 450,000 (45.05 s, past the 80%
    margin but not the deadline) is tried on an idle server only."""
    gate, clock = gate_at(100.0)
    gate.throughput.record(10_000, 1.05)
    with pytest.raises(RequestError) as refused:
        with gate.admit(500_000, never, due=clock.now + 50):
            pytest.fail("admitted")
    assert refused.value.status == http.HTTPStatus.SERVICE_UNAVAILABLE
    assert refused.value.headers == {"Retry-After": "50"}
    assert refused.value.details == pytest.approx(
        {"expected_s": 50.05, "deadline_s": 50.0, "retry_after_s": 50}, abs=0.051
    )
    message = str(refused.value)
    assert "even alone" in message and "10,000 token-rows/s" in message and "less work" in message
    with gate.admit(450_000, never, due=clock.now + 50):
        refusal = gate._refusal(Ticket(450_000, clock.now + 50), clock.now)
        assert refusal is not None and refusal.status == http.HTTPStatus.SERVICE_UNAVAILABLE
        clock.now += 60  # Slower than the best rate: 7,506 token-rows/s.
    assert gate.throughput.peak == pytest.approx(10_000)
    clock.now += 20  # Idle for 20 s since that one ended.
    refusal = gate._refusal(Ticket(500_000, clock.now + 50), clock.now)
    assert refusal is not None and refusal.headers == {"Retry-After": "30"}
    clock.now += 30
    with gate.admit(500_000, never, due=clock.now + 50):  # Tried: the server may be faster now.
        pass


def test_an_idle_server_takes_a_request_whatever_its_cold_estimate():
    """1 token-row/s before any measurement would refuse everything; an idle server runs it and learns."""
    gate, clock = gate_at(1.0)
    with gate.admit(10_000, never, due=clock.now + 50):
        clock.now += 2.05
    assert gate.throughput.rate == pytest.approx(10_000 / 2.0)


def test_throughput_learns_from_finished_requests_side_by_side():
    """Two requests of 1,000 token-rows that ran 10.05 s together: each saw 100/s, the slots delivered 200/s."""
    gate, clock = gate_at(1e6)
    with gate.admit(1_000, never), gate.admit(1_000, never):
        clock.now += 10.05
    assert gate.throughput.rate == pytest.approx(200.0) and gate.throughput.peak == pytest.approx(200.0)
    assert gate.throughput.samples == 2


def test_throughput_learns_from_work_cut_off():
    """Cut off after 10.05 s with a quarter of its 10,000 token-rows reported: 2,500 / 10 = 250/s."""
    gate, clock = gate_at(1e6)
    with pytest.raises(cancellation.Cancelled), gate.admit(10_000, never) as ticket:
        ticket.rows.begin("gradient rows", 400)
        ticket.rows.advance(100)
        clock.now += 10.05
        raise cancellation.Cancelled("deadline")
    assert gate.throughput.rate == pytest.approx(250.0)


def test_work_cut_off_without_progress_bounds_the_throughput():
    """No rows reported; 1,000 token-rows cut off after 0.3 s, past the 0.05 s expected: the rate was at most
    1,000 / 0.25 = 4,000/s, and the estimate (1e6) drops to it. One cut off sooner than expected says nothing;
    a bound is not a best rate (`peak`)."""
    gate, clock = gate_at(1e6)
    with pytest.raises(cancellation.Cancelled), gate.admit(1_000, never):
        clock.now += 0.3
        raise cancellation.Cancelled("deadline")
    assert gate.throughput.rate == pytest.approx(4_000.0) and math.isnan(gate.throughput.peak)
    with pytest.raises(cancellation.Cancelled), gate.admit(10**9, never):
        raise cancellation.Cancelled("client gone")
    assert gate.throughput.rate == pytest.approx(4_000.0)


def test_throughput_moving_average():
    throughput = Throughput(prior=100.0)
    throughput.record(1_000, 0.01)  # Too short to say anything.
    assert throughput.rate == 100.0 and throughput.samples == 0
    throughput.record(10_000, 1.05)
    assert throughput.rate == pytest.approx(10_000)
    throughput.record(20_000, 1.05, sharing=1.5)
    assert throughput.rate == pytest.approx(0.7 * 10_000 + 0.3 * 30_000)
    assert throughput.peak == pytest.approx(30_000)
    assert throughput.seconds(1_000, sharing=2) == pytest.approx(OVERHEAD_S + 2_000 / throughput.rate)


def test_a_full_queue_is_refused_before_anything_else():
    gate = AdmissionGate(1, 0, 1e6, Throughput(prior=100.0), clock=FakeClock())
    with gate.admit(1_000, never):
        with pytest.raises(RequestError, match="0 heavy requests are waiting") as refused:
            with gate.admit(1, never):
                pytest.fail("admitted")
    assert refused.value.headers == {"Retry-After": "11"}  # ceil(10.05 s) for the slot.
    assert server_admission.SAFETY == 0.8
