"""The demo's LIT HTTP API, as the web UI calls it, on a real server process.

The server runs `python -m demos.glue_demo` with the embedded model, started
once for this module. Also: JSON errors, refused loading and file access,
concurrency, and the demo's command-line errors.
"""

import concurrent.futures
import contextlib
import json
import math
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from lit_nlp.api import components as lit_components
from werkzeug import test as werkzeug_test

import lit_sig
from lit_sig.core import cancellation
from lit_sig.models import datasets
from lit_sig.serving import offline_client, server, server_limits
from tests.helpers import (
    DATASET,
    IG,
    LIT_SIG_INTERPRETERS,
    MODEL,
    REPO,
    SIG,
    call,
    call_ok,
    free_port,
    full_config,
    interpret,
)

MARKUP = "<script>alert('lit')</script>"


def new_input(sentence: str) -> dict:
    """A datapoint the UI made (not in the data set), sent in full."""
    return {"id": "", "data": {"sentence": sentence, "label": "", "_id": ""}, "meta": {"added": True}}


def test_get_info_describes_the_demo(info):
    assert list(info["models"]) == [MODEL]
    assert DATASET in info["models"][MODEL]["datasets"]
    for name in LIT_SIG_INTERPRETERS:
        assert name in info["interpreters"] and name in info["models"][MODEL]["interpreters"]
    assert info["defaultLayout"] == "lit_sig" and "lit_sig" in info["layouts"]
    assert info["initSpecs"] == {"datasets": {}, "models": {}}  # No UI loading controls.


def test_index_loads_no_google_fonts(demo):
    status, content_type, body = call(demo, "/")
    assert status == 200 and content_type.startswith("text/html")
    assert b"fonts.googleapis.com" not in body and b"static/fonts/fonts.css" in body
    status, content_type, css = call(demo, "/static/fonts/fonts.css")
    assert status == 200 and b"Material Icons" in css
    status, content_type, font = call(demo, "/static/fonts/MaterialIcons-Regular.woff2")
    assert status == 200 and font[:4] == b"wOF2"


@pytest.mark.parametrize("interpreter", LIT_SIG_INTERPRETERS)
def test_interpreter_gives_finite_token_salience(demo, info, examples, interpreter):
    example = examples[0]
    preds = call_ok(demo, "/get_preds", {"model": MODEL, "dataset_name": DATASET}, {"inputs": [example["id"]]})
    config = None
    if interpreter in (IG, SIG):
        config = full_config(info, interpreter, **{"Interpolation steps": 10})
    status, _, body = interpret(demo, interpreter, [example["id"]], config)
    assert status == 200, body[:2000]
    (result,) = json.loads(body)
    salience = result["token_grad_sentence"]
    assert salience["tokens"] == preds[0]["tokens_sentence"]
    assert len(salience["salience"]) == len(salience["tokens"]) > 3
    assert all(math.isfinite(s) for s in salience["salience"])
    assert any(s != 0 for s in salience["salience"])
    # LIT's salience module draws every key as token salience: nothing else may be there.
    assert list(result) == ["token_grad_sentence"]


ERROR_CASES = {
    # name: (route, params, body, status, a word of the message)
    "empty text": (
        "/get_preds",
        {"model": MODEL, "dataset_name": DATASET},
        {"inputs": [new_input("  ")]},
        400,
        "empty",
    ),
    "text not a string": (
        "/get_preds",
        {"model": MODEL},
        {"inputs": [{"id": "", "data": {"sentence": 3, "_id": ""}}]},
        400,
        "string",
    ),
    "no inputs": ("/get_preds", {"model": MODEL, "dataset_name": DATASET}, {"config": {}}, 400, "inputs"),
    "unknown example id": (
        "/get_preds",
        {"model": MODEL, "dataset_name": DATASET},
        {"inputs": [MARKUP]},
        400,
        "example id",
    ),
    "malformed JSON": (
        "/get_preds",
        {"model": MODEL, "dataset_name": DATASET},
        b'{"inputs": [' + MARKUP.encode(),
        400,
        "Expecting",
    ),
    "JSON list": ("/get_preds", {"model": MODEL, "dataset_name": DATASET}, [MARKUP], 400, "Malformed"),
    "unknown model": ("/get_preds", {"model": MARKUP, "dataset_name": DATASET}, {"inputs": []}, 404, "Unknown model"),
    "unknown dataset": ("/get_dataset", {"dataset_name": MARKUP}, None, 404, "Unknown dataset_name"),
    "unknown interpreter": (
        "/get_interpretations",
        {"model": MODEL, "dataset_name": DATASET, "interpreter": MARKUP},
        {"inputs": []},
        404,
        "Unknown interpreter",
    ),
    "unknown metrics": (
        "/get_metrics",
        {"model": MODEL, "dataset_name": DATASET, "metrics": MARKUP},
        {"inputs": []},
        404,
        "Unknown metrics",
    ),
    "unknown route": ("/get_" + urllib.parse.quote(MARKUP), None, {"inputs": []}, 404, "Not Found"),
    "traversal in a static path": ("/static/../../../../etc/passwd", None, None, 400, "Bad Request"),
    "notebook-only route": ("/push_ui_state", {"dataset_name": DATASET}, {"inputs": []}, 404, "notebooks"),
    "JSON nested 10,000 deep": (
        "/get_preds",
        {"model": MODEL, "dataset_name": DATASET},
        b"[" * 10_000 + b"]" * 10_000,
        400,
        "nested",
    ),
    "NUL in a static path": ("/static/%00../etc/passwd", None, None, 400, "NUL"),
    "5,000 example ids": (
        "/get_preds",
        {"model": MODEL, "dataset_name": DATASET},
        {"inputs": ["x"] * 5000},
        413,
        "at most 1000",
    ),
    "inputs not a list": ("/get_preds", {"model": MODEL, "dataset_name": DATASET}, {"inputs": {"a": 1}}, 400, "list"),
    "input not an example": (
        "/get_preds",
        {"model": MODEL, "dataset_name": DATASET},
        {"inputs": [3]},
        400,
        "example id",
    ),
    "config not an object": (
        "/get_interpretations",
        {"model": MODEL, "dataset_name": DATASET, "interpreter": IG},
        {"inputs": [], "config": [1]},
        400,
        "config",
    ),
}
# (interpreter, config overrides, a word of the message); the example is the data set's first.
CONFIG_ERROR_CASES = {
    "unknown class": (SIG, {"Class to explain": MARKUP}, "Unknown class"),
    "steps 0": (IG, {"Interpolation steps": 0}, "Interpolation steps"),
    "steps -1": (SIG, {"Interpolation steps": -1}, "Interpolation steps"),
    "steps 10^7": (SIG, {"Interpolation steps": 10**7}, "Interpolation steps"),
    "steps abc": (IG, {"Interpolation steps": "abc" + MARKUP}, "Interpolation steps"),
    "unknown baseline": (IG, {"Baseline": MARKUP}, "Baseline"),
    "unknown method": (SIG, {"Integration method": MARKUP}, "Integration method"),
    "unknown key": (IG, {MARKUP: 1}, "Unknown config key"),
    "normalize not a bool": (IG, {"Normalize": MARKUP}, "Normalize"),
    "steps of 400 digits": (SIG, {"Interpolation steps": 10**400}, "Interpolation steps"),
    "tolerance of 400 digits": (SIG, {"Tolerance": 10**400}, "Tolerance"),
    "LIT IG steps abc": ("Integrated Gradients", {"Interpolation steps": "abc"}, "Interpolation steps"),
    "LIT IG steps 1000": ("Integrated Gradients", {"Interpolation steps": 1000}, "[5, 100]"),
    "LIME samples 5000": ("LIME", {"Number of samples": "5000"}, "Number of samples"),
}


def assert_json_error(status: int, content_type: str, body: bytes, expected_status: int, word: str) -> None:
    assert status == expected_status, body[:2000]
    assert content_type.startswith("application/json")
    message = json.loads(body)["error"]
    assert isinstance(message, str) and word.lower() in message.lower(), message
    assert b"Traceback" not in body and b'File "' not in body
    assert b"<" not in body and b">" not in body  # Nothing the client sent comes back as markup.


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_request_gets_json_error(demo, case):
    route, params, body, expected_status, word = ERROR_CASES[case]
    assert_json_error(*call(demo, route, params, body), expected_status, word)
    assert call(demo, "/get_info")[0] == 200  # Still serving.


@pytest.mark.parametrize("case", CONFIG_ERROR_CASES)
def test_bad_interpreter_config_gets_json_error(demo, info, examples, case):
    interpreter, overrides, word = CONFIG_ERROR_CASES[case]
    config = full_config(info, interpreter, **overrides)
    assert_json_error(*interpret(demo, interpreter, [examples[0]["id"]], config), 400, word)
    assert call(demo, "/get_info")[0] == 200


@pytest.mark.parametrize(
    "route, params",
    [
        ("/create_model", {"model_name": MODEL}),
        ("/create_dataset", {"dataset_name": DATASET}),
    ],
)
def test_loading_from_the_ui_is_refused(demo, route, params):
    body = {"inputs": [], "config": {"new_name": "other"}}
    assert_json_error(*call(demo, route, params, body), 403, "--allow_loading")


@pytest.mark.parametrize("route", ["/save_datapoints", "/load_datapoints"])
def test_datapoint_files_are_refused_without_a_folder(demo, examples, route):
    params = {"dataset_name": DATASET, "path": "/tmp/lit_sig_should_not_exist"}
    assert_json_error(*call(demo, route, params, {"inputs": examples[:1]}), 403, "--datapoints_dir")
    assert not list(pathlib.Path("/tmp").glob("lit_sig_should_not_exist*"))


@pytest.fixture
def local_app(tiny_model, tmp_path) -> werkzeug_test.Client:
    """The hardened app in this process, with a datapoints folder and loading on."""
    (tmp_path / "points").mkdir()
    app = server.HardenedLitApp(
        {"tiny": tiny_model},
        {DATASET: datasets.builtin(4)},
        datapoints_dir=tmp_path / "points",
        allow_loading=True,
        client_root=str(offline_client.LIT_CLIENT_ROOT),
    )
    return werkzeug_test.Client(app)


def local_call(client: werkzeug_test.Client, route: str, params: dict[str, str], body: Any) -> tuple[int, str, bytes]:
    response = client.post(route, query_string=params, data=json.dumps(body), content_type="text/plain")
    return response.status_code, response.content_type, response.data


def test_datapoints_are_saved_and_loaded_inside_the_folder(local_app, tmp_path):
    examples = json.loads(local_call(local_app, "/get_dataset", {"dataset_name": DATASET}, {})[2])
    for path in ("mine", str(tmp_path / "points" / "abs")):
        status, _, body = local_call(
            local_app, "/save_datapoints", {"dataset_name": DATASET, "path": path}, {"inputs": examples[:2]}
        )
        assert status == 200, body
        status, _, body = local_call(
            local_app, "/load_datapoints", {"dataset_name": DATASET, "path": path}, {"inputs": []}
        )
        assert status == 200, body
        assert [ex["data"]["sentence"] for ex in json.loads(body)] == [ex["data"]["sentence"] for ex in examples[:2]]
    assert sorted(p.name for p in (tmp_path / "points").iterdir()) == [
        "abs.lit.jsonl",
        "abs.lit.jsonl.spec",
        "mine.lit.jsonl",
        "mine.lit.jsonl.spec",
    ]


@pytest.mark.parametrize("path", ["../escape", "/tmp/lit_sig_escape", "sub/../../escape", ".", "", "x/..", "a\x00b"])
def test_datapoint_paths_outside_the_folder_are_refused(local_app, tmp_path, path):
    for route in ("/save_datapoints", "/load_datapoints"):
        status, content_type, body = local_call(
            local_app, route, {"dataset_name": DATASET, "path": path}, {"inputs": []}
        )
        assert status in (400, 403), body
        assert content_type.startswith("application/json") and "error" in json.loads(body)
    assert not list(tmp_path.glob("escape*")) and not list(pathlib.Path("/tmp").glob("lit_sig_escape*"))
    assert not list((tmp_path / "points").iterdir())


def test_missing_datapoints_file_is_404(local_app):
    status, _, body = local_call(
        local_app, "/load_datapoints", {"dataset_name": DATASET, "path": "absent"}, {"inputs": []}
    )
    assert status == 404 and "error" in json.loads(body)


def test_loading_route_works_when_allowed(local_app):
    config = {"new_name": "copy", "examples": [{"sentence": "A copied sentence.", "label": "1"}]}
    status, _, body = local_call(
        local_app, "/create_dataset", {"dataset_name": DATASET}, {"inputs": [], "config": config}
    )
    assert status == 200, body
    info, name = json.loads(body)
    assert name == "copy" and "copy" in info["datasets"]
    (example,) = json.loads(local_call(local_app, "/get_dataset", {"dataset_name": "copy"}, {})[2])
    assert example["data"]["sentence"] == "A copied sentence." and example["data"]["label"] == "1"
    # Arguments the data set's class doesn't take are the client's mistake, not a server fault.
    status, _, body = local_call(
        local_app, "/create_dataset", {"dataset_name": DATASET}, {"inputs": [], "config": {"new_name": "x"}}
    )
    assert status == 400 and "examples" in json.loads(body)["error"]


def test_concurrent_mixed_requests_match_sequential(demo, info, examples):
    """8 clients at once (predict, IG, SIG) get exactly what each gets alone."""
    requests = [
        (
            "/get_preds",
            {"model": MODEL, "dataset_name": DATASET},
            {"inputs": [new_input(f"Concurrent sentence {i}, rather good.")]},
        )
        for i in range(3)
    ]
    for interpreter, steps, indices in ((IG, 16, (1, 2, 3)), (SIG, 6, (4, 5))):
        params = {"model": MODEL, "dataset_name": DATASET, "interpreter": interpreter, "do_predict": "1"}
        config = full_config(info, interpreter, **{"Interpolation steps": steps})
        requests += [
            ("/get_interpretations", params, {"inputs": [examples[i]["id"]], "config": config}) for i in indices
        ]
    assert len(requests) == 8

    sequential = [call_ok(demo, *request) for request in requests]
    barrier = threading.Barrier(len(requests))

    def send(request):
        barrier.wait()
        return call_ok(demo, *request)

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        concurrent_results = list(pool.map(send, requests))
    assert concurrent_results == sequential


def test_bad_command_lines_exit_with_a_clear_error(tmp_path, tiny_model_dir):
    cases = {
        # flags: a word of the error
        ("--max_examples", "0"): "--max_examples",
        ("--device", "tpu"): "--device",
        ("--data", str(tmp_path / "missing.tsv")): "--data",
        ("--labels", "0,1,2"): "--labels",  # The embedded model's labels are fixed.
        ("--labels", "a,b,c", "--model", str(tiny_model_dir)): "error",  # A 2-class checkpoint.
        ("--datapoints_dir", str(tmp_path / "missing")): "--datapoints_dir",
    }
    if not torch.cuda.is_available():
        cases[("--device", "cuda")] = "--device"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    processes = {
        args: subprocess.Popen(
            [sys.executable, "-m", "demos.glue_demo", "--port", str(free_port()), *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in cases
    }
    for args, process in processes.items():
        try:
            out, err = process.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"{args}: still running")
        assert process.returncode != 0, f"{args}: exit 0\n{out}{err}"
        assert "Traceback" not in err, f"{args}:\n{err}"
        assert cases[args] in err, f"{args}:\n{err}"


# --- Limits, time-outs and cancellation, on an in-process server with the tiny model. ---


class BlockingInterpreter(lit_components.Interpreter):
    """Heavy work made deterministic: runs until `release` is set, checking for cancellation."""

    def __init__(self):
        self.started = threading.Event()
        self.release = threading.Event()
        self.stopped: list[str] = []

    def run(self, inputs, model, dataset, model_outputs=None, config=None):
        self.started.set()
        try:
            while not self.release.wait(0.02):
                cancellation.check()
        except cancellation.Cancelled as stop:
            self.stopped.append(str(stop))
            raise
        return [{} for _ in inputs]


@contextlib.contextmanager
def local_server(model, limits: server.Limits, **interpreters) -> Iterator[tuple[str, server.HardenedLitApp]]:
    """Serves the tiny model and `interpreters` (plus lit_sig's SIG and IG) on a free loopback port."""
    app = server.HardenedLitApp(
        {"tiny": model},
        {DATASET: datasets.builtin(4)},
        limits=limits,
        client_root=str(offline_client.LIT_CLIENT_ROOT),
        interpreters={SIG: lit_sig.SequentialIntegratedGradients(), IG: lit_sig.IntegratedGradients(), **interpreters},
    )
    httpd = server.make_server(app, "127.0.0.1", 0, limits.read_timeout_s)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", app
    finally:
        httpd.shutdown()
        httpd.server_close()


def raw_exchange(base: str, request: bytes, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """Sends raw bytes; returns the status, headers (lower-case names) and body of the answer."""
    host, port = urllib.parse.urlsplit(base).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


def sig_body(sentence: str, steps: int) -> dict:
    return {"inputs": [new_input(sentence)], "config": {"Interpolation steps": steps, "Normalize": False}}


TINY_PARAMS = {"model": "tiny", "dataset_name": DATASET, "do_predict": "1"}


@pytest.fixture(scope="module")
def quick_server(tiny_model) -> Iterator[tuple[str, server.HardenedLitApp]]:
    with local_server(tiny_model, server.Limits(read_timeout_s=1, max_request_cost=50_000)) as served:
        yield served


@pytest.mark.parametrize(
    "request_bytes, status, word",
    [
        (b"GARBAGE\r\n\r\n", 400, "Bad request"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "URI Too Long"),
        (b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431, "Header"),
        (b"POST /get_info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "chunk"),
        (b"POST /get_info HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}", 400, "shorter"),
        (b"GET /static/%00../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400, "NUL"),
    ],
)
def test_protocol_errors_get_json(quick_server, request_bytes, status, word):
    got_status, headers, body = raw_exchange(quick_server[0], request_bytes)
    assert got_status == status, body
    assert headers["content-type"].startswith("application/json")
    assert headers["x-content-type-options"] == "nosniff"
    assert word.lower() in json.loads(body)["error"].lower()


def test_a_stalled_body_times_out_with_408(quick_server):
    """Content-Length larger than what arrives: the read time-out (1 s here) answers instead of waiting forever."""
    host, port = urllib.parse.urlsplit(quick_server[0]).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"POST /get_info HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}")  # And then nothing.
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"in time" in answer


def test_chunked_body_over_the_limit_is_413(quick_server, monkeypatch):
    monkeypatch.setattr(server, "MAX_REQUEST_BYTES", 10_000)
    chunk = b"a" * 1000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20)) + b"0\r\n\r\n"
    request = b"POST /get_info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    status, headers, answer = raw_exchange(quick_server[0], request)
    assert status == 413 and "10000 bytes" in json.loads(answer)["error"]
    small = b"POST /get_info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    status, _, answer = raw_exchange(quick_server[0], small)
    assert status == 200 and "models" in json.loads(answer)


def test_request_cost_is_bounded(quick_server):
    base, _ = quick_server
    sentence = "a rather long sentence that has quite a few tokens in it"
    status, _, body = call(base, "/get_interpretations", TINY_PARAMS | {"interpreter": SIG}, sig_body(sentence, 500))
    message = json.loads(body)["error"]
    assert status == 413 and "max_request_cost" in message and "50,000" in message
    status, _, body = call(base, "/get_interpretations", TINY_PARAMS | {"interpreter": SIG}, sig_body(sentence, 2))
    assert status == 200, body


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


def test_deadline_stops_real_sig(tiny_model):
    """A deadline that has passed before the first model pass: the path engine stops at its first check."""
    with local_server(tiny_model, server.Limits(request_deadline_s=1e-9)) as (base, _):
        status, _, body = call(base, "/get_interpretations", TINY_PARAMS | {"interpreter": SIG}, sig_body("good", 5))
    assert status == 503 and "deadline" in json.loads(body)["error"]


def test_busy_server_answers_503_and_quick_routes_still_answer(tiny_model):
    """One heavy slot and one queue place: the third heavy request is refused at once; quick ones pass."""
    slow = BlockingInterpreter()
    with local_server(tiny_model, server.Limits(max_heavy_requests=1, max_queued_requests=1), Slow=slow) as (base, app):
        params = TINY_PARAMS | {"interpreter": "Slow"}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(call, base, "/get_interpretations", params, {"inputs": [new_input("first")]})
            assert slow.started.wait(60)
            queued = pool.submit(call, base, "/get_interpretations", params, {"inputs": [new_input("second")]})
            while app.heavy_gate.admitted < 2:
                time.sleep(0.01)
            status, headers, body = raw_exchange(
                base,
                b"POST /get_interpretations?"
                + urllib.parse.urlencode(params).encode()
                + b' HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{"inputs":[]}',
            )
            assert status == 503 and headers["retry-after"] == "5" and "busy" in json.loads(body)["error"]
            # The heavy ones are still held; quick routes answer meanwhile.
            assert call(base, "/get_info")[0] == 200
            assert len(call_ok(base, "/get_dataset", {"dataset_name": DATASET})) == 4
            preds = call_ok(
                base, "/get_preds", {"model": "tiny", "dataset_name": DATASET}, {"inputs": [new_input("quick")]}
            )
            assert len(preds) == 1 and not running.done() and not queued.done()
            slow.release.set()
            assert running.result()[0] == 200 and queued.result()[0] == 200


def test_work_stops_when_its_client_leaves(tiny_model):
    slow = BlockingInterpreter()
    with local_server(tiny_model, server.Limits(), Slow=slow) as (base, app):
        query = urllib.parse.urlencode(TINY_PARAMS | {"interpreter": "Slow"}).encode()
        body = json.dumps({"inputs": [new_input("left")]}).encode()
        host, port = urllib.parse.urlsplit(base).netloc.split(":")
        with socket.create_connection((host, int(port)), timeout=60) as sock:
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
        while app.heavy_gate.admitted:
            time.sleep(0.01)


def test_small_load_keeps_results_exact_and_errors_bounded(tiny_model):
    """benchmarks.server_load in small: 4 clients for 2 s; only 503s may fail, SIG results equal the lone ones."""
    from benchmarks import server_load

    limits = server.Limits(max_heavy_requests=1, max_queued_requests=1)
    with local_server(
        tiny_model, limits, **{"Sequential Integrated Gradients": lit_sig.SequentialIntegratedGradients()}
    ) as (base, app):
        report = server_load.run_load(base, "tiny", clients=4, duration_s=2, max_requests=200, steps=3, backoff_s=0.05)
        assert app.heavy_gate.admitted == 0
    assert report["server_errors_other_than_503"] == 0 and report["no_answer"] == 0, report
    assert report["sig_completed"] > 0 and report["sig_mismatches"] == 0, report
    assert all(status in (200, 503) for status in (int(k.split()[1]) for k in report["statuses"])), report
    assert not any(k.startswith("quick") and not k.endswith("200") for k in report["statuses"]), report
    assert report["alone_after_equal"], report
