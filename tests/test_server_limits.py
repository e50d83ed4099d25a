"""The hardened server's bounds on work, over real HTTP to an in-process server with the tiny model.

Costs (LIT's own components priced by what they run), admission by expected
wait and finish (the arithmetic: test_server_admission), deadlines,
cancellation when the client leaves, stored data within its cap, and the prediction cache keyed by the data.
"""

import concurrent.futures
import json
import math
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from lit_nlp.api import components as lit_components
from lit_nlp.components import gradient_maps, lime_explainer, salience_clustering
from lit_nlp.lib import caching

import lit_sig
from lit_sig.core import cancellation
from lit_sig.lit import captum_bridge
from lit_sig.serving import server, server_limits
from tests.helpers import (
    DATASET,
    SIG,
    TINY_PARAMS,
    assert_json_error,
    call,
    call_ok,
    connect,
    local_server,
    new_input,
    raw_exchange,
    sig_body,
)

HEAVY_ROWS = 10_000  # Per input of the blocking interpreter: never light.


class BlockingInterpreter(lit_components.Interpreter):
    """Heavy work made deterministic: runs until `release` is set, checking for cancellation."""

    def __init__(self):
        self.started = threading.Event()
        self.release = threading.Event()
        self.stopped: list[str] = []

    def rows_per_token_and_input(self, config) -> tuple[int, int]:
        return 0, HEAVY_ROWS

    def run(self, inputs, model, dataset, model_outputs=None, config=None):
        self.started.set()
        try:
            while not self.release.wait(0.02):
                cancellation.check()
        except cancellation.Cancelled as stop:
            self.stopped.append(str(stop))
            raise
        return [{} for _ in inputs]


def lit_salience() -> dict[str, lit_components.Interpreter]:
    mappers = {"Grad L2 Norm": gradient_maps.GradientNorm(), "LIME": lime_explainer.LIME()}
    return mappers | {"Salience Clustering": salience_clustering.SalienceClustering(dict(mappers))}


@pytest.fixture(scope="module")
def quick_server(tiny_model) -> Iterator[tuple[str, server.HardenedLitApp]]:
    limits = server.Limits(max_request_cost=50_000)
    with local_server(tiny_model, limits, **lit_salience()) as served:
        yield served


def interpretation(base: str, interpreter: str, inputs: list, config: dict | None) -> tuple[int, str, bytes]:
    return call(
        base, "/get_interpretations", TINY_PARAMS | {"interpreter": interpreter}, {"inputs": inputs, "config": config}
    )


def test_request_cost_is_bounded(quick_server):
    base, _ = quick_server
    sentence = "a rather long sentence that has quite a few tokens in it"
    status, _, body = call(base, "/get_interpretations", TINY_PARAMS | {"interpreter": SIG}, sig_body(sentence, 500))
    message = json.loads(body)["error"]
    assert status == 413 and "max_request_cost" in message and "50,000" in message
    status, _, body = call(base, "/get_interpretations", TINY_PARAMS | {"interpreter": SIG}, sig_body(sentence, 2))
    assert status == 200, body


def test_components_that_run_others_are_priced_by_what_they_run(quick_server, tiny_model):
    """LIME with 1000 samples over all 4 sentences (about 4 x 10 tokens x 1001 rows) is over 50,000
    token-rows alone and through Salience Clustering (which runs it on the whole data set when given no
    inputs); Salience Clustering with a gradient passes."""
    base, _ = quick_server
    lime = {"Number of samples": 1000, "_salience_target": {"field": "probas", "index": None}}
    clustering = {
        "Number of clusters": 2,
        "Number of top salient tokens to consider per data point": 5,
        "Number of tokens to display per cluster": 5,
        "Clustering seed": "0",
    }
    examples = call_ok(base, "/get_dataset", {"dataset_name": DATASET})
    cost = server_limits.cost_of((0, 1001), server_limits.token_counts(tiny_model, [e["data"] for e in examples]))
    assert cost > 50_000
    assert_json_error(*interpretation(base, "LIME", [e["id"] for e in examples], lime), 413, "max_request_cost")
    through = clustering | lime | {"Salience Mapper": "LIME"}
    assert_json_error(*interpretation(base, "Salience Clustering", [], through), 413, f"{cost:,} token-rows")
    cheap = clustering | {"Salience Mapper": "Grad L2 Norm"}
    status, _, body = interpretation(base, "Salience Clustering", [], cheap)
    assert status == 200, body
    assert sorted(json.loads(body)["cluster_ids"]["token_grad_sentence"]) in ([0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1])


def test_too_many_inputs_is_413(quick_server):
    base, app = quick_server
    inputs = [new_input("one more")] * 1001
    status, _, body = call(base, "/get_preds", {"model": "tiny", "dataset_name": DATASET}, {"inputs": inputs})
    assert status == 413 and "1000" in json.loads(body)["error"]


def test_a_bug_is_a_bare_500(quick_server, monkeypatch):
    def broken(*args, **kw):
        raise TypeError("secret detail")

    monkeypatch.setattr(server.HardenedLitApp, "_check_names", broken)  # A bug inside the server.
    status, content_type, body = call(quick_server[0], "/get_dataset", {"dataset_name": DATASET})
    assert status == 500 and json.loads(body) == {"error": server.INTERNAL_ERROR}
    assert b"secret" not in body and b"TypeError" not in body


@pytest.mark.parametrize("interpreter", [SIG, "captum Occlusion"])
def test_deadline_stops_real_work(tiny_model, interpreter):
    """A deadline that has passed before the first model pass: the path engine (or captum's forward) stops
    at its first check."""
    bridged = {"captum Occlusion": captum_bridge.CaptumInterpreter("Occlusion")}
    with local_server(tiny_model, server.Limits(request_deadline_s=1e-9), **bridged) as (base, _):
        params = TINY_PARAMS | {"interpreter": interpreter}
        status, _, body = call(base, "/get_interpretations", params, {"inputs": [new_input("good fun")]})
    assert status == 503 and "deadline" in json.loads(body)["error"]


def test_busy_server_answers_503_and_quick_routes_still_answer(tiny_model):
    """One heavy slot and one queue place (no wait or deadline bound): the third heavy request is refused at
    once; quick ones pass."""
    slow = BlockingInterpreter()
    limits = server.Limits(max_heavy_requests=1, max_queued_requests=1, max_queue_wait_s=1e6, request_deadline_s=1e6)
    with local_server(tiny_model, limits, Slow=slow) as (base, app):
        params = TINY_PARAMS | {"interpreter": "Slow"}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(call, base, "/get_interpretations", params, {"inputs": [new_input("first")]})
            assert slow.started.wait(60)
            queued = pool.submit(call, base, "/get_interpretations", params, {"inputs": [new_input("second")]})
            while app.admission.admitted < 2:
                time.sleep(0.01)
            status, headers, body = call_heavy(base, params, "third")
            assert status == 503 and int(headers["retry-after"]) >= 1 and "waiting for a slot" in body
            # The heavy ones are still held; quick routes (and light interpretations) answer meanwhile.
            assert call(base, "/get_info")[0] == 200
            assert len(call_ok(base, "/get_dataset", {"dataset_name": DATASET})) == 4
            preds = call_ok(
                base, "/get_preds", {"model": "tiny", "dataset_name": DATASET}, {"inputs": [new_input("quick")]}
            )
            assert (
                call(base, "/get_interpretations", TINY_PARAMS | {"interpreter": SIG}, sig_body("light", 2))[0] == 200
            )
            assert len(preds) == 1 and not running.done() and not queued.done()
            slow.release.set()
            assert running.result()[0] == 200 and queued.result()[0] == 200


def heavy_request(params: dict, sentence: str) -> bytes:
    body = json.dumps({"inputs": [new_input(sentence)]}).encode()
    return (
        b"POST /get_interpretations?"
        + urllib.parse.urlencode(params).encode()
        + b" HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def call_heavy(base: str, params: dict, sentence: str) -> tuple[int, dict[str, str], str]:
    status, headers, answer = raw_exchange(base, heavy_request(params, sentence))
    return status, headers, json.loads(answer).get("error", "") if status != 200 else ""


def test_a_request_that_would_wait_too_long_gets_503_at_once(tiny_model):
    """One slot, a queue of 16, at most 5 s of expected wait: with the slot taken by a request of ~50 s at the
    throughput measured so far (1,000 token-rows/s), the next is refused at once with Retry-After, while
    the running one goes on; once it is done, a heavy request is admitted again."""
    slow = BlockingInterpreter()
    limits = server.Limits(max_heavy_requests=1, max_queue_wait_s=5)
    with local_server(tiny_model, limits, Slow=slow) as (base, app):
        app.admission.throughput.rate = 1_000.0
        params = TINY_PARAMS | {"interpreter": "Slow"}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(call_heavy, base, params, "first")
            assert slow.started.wait(60)
            expected = app.admission.expected_wait_s()
            assert expected > 5  # About cost / rate: ~5 tokens x 10,000 rows / 1,000 per s.
            status, headers, message = call_heavy(base, params, "second")
            assert status == 503 and "would wait about" in message, message
            assert 1 <= int(headers["retry-after"]) <= math.ceil(expected)
            assert not running.done() and app.admission.admitted == 1  # Nothing was queued.
            slow.release.set()
            assert running.result()[0] == 200
        assert app.admission.expected_wait_s() == 0
        slow.release.set()
        assert call_heavy(base, params, "third")[0] == 200


def test_a_request_that_cannot_finish_in_time_gets_503_at_once(tiny_model):
    """Two slots, a 50 s deadline, 1,000 token-rows/s measured: beside a running request of 30,000 token-rows
    (3 tokens x 10,000 rows), another would share the cores and take 60 s: refused at once (503, Retry-After,
    its expected time and the deadline in the JSON), though a slot is free. With the best rate measured at
    500/s, the same request alone would take 60 s > 50 s: 503 however idle the server is."""
    slow = BlockingInterpreter()
    with local_server(tiny_model, server.Limits(max_heavy_requests=2), Slow=slow) as (base, app):
        app.admission.throughput.rate = 1_000.0
        params = TINY_PARAMS | {"interpreter": "Slow"}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(call_heavy, base, params, "first")
            assert slow.started.wait(60)
            start = time.monotonic()
            status, headers, answer = raw_exchange(base, heavy_request(params, "second"))
            assert time.monotonic() - start < 10  # At once, not after the deadline (answered in ms).
            error = json.loads(answer)
            assert status == 503 and "deadline" in error["error"], error
            assert error["deadline_s"] == pytest.approx(50, abs=1), error
            assert error["expected_s"] == pytest.approx(60, abs=1), error
            assert int(headers["retry-after"]) == error["retry_after_s"] >= 1
            assert not running.done() and app.admission.admitted == 1
            slow.release.set()
            assert running.result()[0] == 200
        app.admission.throughput.peak = 500.0
        status, _, answer = raw_exchange(base, heavy_request(params, "third"))
        error = json.loads(answer)
        assert status == 503 and error["expected_s"] == pytest.approx(60, abs=1) and "even alone" in error["error"]


def test_work_stops_when_its_client_leaves(tiny_model):
    slow = BlockingInterpreter()
    with local_server(tiny_model, server.Limits(), Slow=slow) as (base, app):
        query = urllib.parse.urlencode(TINY_PARAMS | {"interpreter": "Slow"}).encode()
        body = json.dumps({"inputs": [new_input("left")]}).encode()
        with connect(base) as sock:
            sock.sendall(
                b"POST /get_interpretations?"
                + query
                + b" HTTP/1.1\r\nHost: x\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            assert slow.started.wait(60)
        while not slow.stopped:  # Never set (and the test times out) if the work went on.
            time.sleep(0.01)
        assert slow.stopped == [server_limits.CLIENT_GONE]
        while app.admission.admitted:
            time.sleep(0.01)


def test_small_load_keeps_results_exact_and_errors_bounded(tiny_model):
    """benchmarks.server_load in small: 4 clients for 2 s; only 503s may fail, SIG results equal the lone ones."""
    from benchmarks import server_load

    limits = server.Limits(max_heavy_requests=1, max_queued_requests=1, light_request_cost=1)
    with local_server(
        tiny_model, limits, **{"Sequential Integrated Gradients": lit_sig.SequentialIntegratedGradients()}
    ) as (base, app):
        report = server_load.run_load(base, "tiny", clients=4, duration_s=2, max_requests=200, steps=3, backoff_s=0.05)
        assert app.admission.admitted == 0
    assert report["server_errors_other_than_503"] == 0 and report["no_answer"] == 0, report
    assert report["sig_completed"] > 0 and report["sig_mismatches"] == 0, report
    assert all(status in (200, 503) for status in (int(k.split()[1]) for k in report["statuses"])), report
    assert not any(k.startswith("quick") and not k.endswith("200") for k in report["statuses"]), report
    assert report["alone_503_after"] == 0 and set(report["alone_after_s"]) == set(report["sig_completed_by_request"])


def test_the_load_test_compares_up_to_float32_rounding_of_the_scale():
    from benchmarks import server_load

    alone = [{"sig": {"tokens": ["a", "b"], "salience": [0.5, -2.0]}}]
    rounded = [{"sig": {"tokens": ["a", "b"], "salience": [0.5 + 1.5e-5, -2.0]}}]  # 1.5e-5 <= 1e-5 x 2.
    assert server_load.mismatch(rounded, alone) is None
    off = [{"sig": {"tokens": ["a", "b"], "salience": [0.5 + 3e-5, -2.0]}}]
    assert "differs by 3e-05 at scale 2" in server_load.mismatch(off, alone)
    assert server_load.mismatch([{"sig": {"tokens": ["a", "c"], "salience": [0.5, -2.0]}}], alone)
    assert server_load.mismatch([{"sig": {"tokens": ["a", "b"], "salience": [0.5]}}], alone)
    assert server_load.mismatch([{"other": {}}], alone)


def test_posted_data_is_off_by_default_and_bounded_when_on(tiny_model):
    limits = server.Limits(max_new_data_bytes=400)
    params = {"dataset_name": DATASET}
    with local_server(tiny_model, limits, app_kw={"allow_new_data": True}) as (base, _):
        mistakes = [
            (b"", "inputs"),
            ({"inputs": 5}, "inputs"),
            ({}, "inputs"),
            ({"inputs": [3]}, "example"),
            ({"inputs": [{"data": {"sentence": "x"}}]}, "Unknown field"),  # An input as other routes take it.
            ({"inputs": [{"label": "1"}]}, "required field"),
            ({"inputs": [{"sentence": 5, "label": "1"}]}, "string"),
        ]
        for body, word in mistakes:
            assert_json_error(*call(base, "/post_new_data", params, body), 400, word)
        assert_json_error(*call(base, "/post_new_data", {}, {"inputs": []}), 400, "dataset_name")
        examples = [{"sentence": "Stored for a link.", "label": "1"}]
        links = call_ok(base, "/post_new_data", params, {"inputs": examples})
        saved_id = links["load"].split("=", 1)[1]
        (fetched,) = call_ok(base, "/fetch_new_data", {"saved_datapoints_id": saved_id})
        assert fetched["data"]["sentence"] == "Stored for a link." and fetched["id"] == fetched["data"]["_id"]
        big = [{"sentence": "x" * 350, "label": "1"}]  # 382 bytes: over 400 with the first.
        assert_json_error(*call(base, "/post_new_data", params, {"inputs": big}), 413, "max_new_data_bytes")
        assert call(base, "/remove_new_data", {"saved_datapoints_id": saved_id})[0] == 200
        assert_json_error(*call(base, "/fetch_new_data", {"saved_datapoints_id": saved_id}), 400, "No saved data")
        assert call(base, "/post_new_data", params, {"inputs": big})[0] == 200  # Room again.


def test_the_cache_keys_predictions_by_their_data(tiny_model):
    """A copy of a served example whose text was changed but whose `_id` was kept (as LIT's Ablation Flip
    makes them), or any example with a made-up id, gets its own prediction; the served example is cached."""
    from lit_sig.models import datasets

    dataset = datasets.builtin(4)
    served = dict(dataset.examples[0], _id=caching.input_hash(dataset.examples[0]))
    ids = {served["_id"]}
    cache = server.DataKeyedCache(tiny_model, "tiny", ids.__contains__)
    (original,) = cache.predict([served])
    changed = dict(served, sentence="completely different words here")
    (from_copy,) = cache.predict([changed])
    (alone,) = tiny_model.predict([dict(changed, _id="")])
    assert from_copy["probas"].tolist() == alone["probas"].tolist() != original["probas"].tolist()
    assert cache.key_fn(served) == ("tiny", served["_id"])
    assert cache.key_fn(changed) is None and cache.key_fn(dict(changed, _id="made-up")) is None
    (again,) = cache.predict([served])
    assert again is original  # From the cache.
