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
from werkzeug import test as werkzeug_test

from lit_sig import datasets, offline_client, server

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = "sst2_minilm"
DATASET = "sentences"
LIT_SIG_INTERPRETERS = (
    "lit_sig Gradient Norm",
    "lit_sig Gradient x Input",
    "lit_sig Integrated Gradients",
    "Sequential Integrated Gradients",
)
IG, SIG = LIT_SIG_INTERPRETERS[2:]
MARKUP = "<script>alert('lit')</script>"
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, route: str, params: dict[str, str] | None = None, body: Any = None) -> tuple[int, str, bytes]:
    """One request as LIT's client sends it: POST of a JSON string, or GET without a body."""
    url = base + route + ("?" + urllib.parse.urlencode(params) if params else "")
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="GET" if data is None else "POST", headers={"Content-Type": "text/plain;charset=UTF-8"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def call_ok(base: str, route: str, params: dict[str, str] | None = None, body: Any = None) -> Any:
    status, _, content = call(base, route, params, body)
    assert status == 200, content[:2000]
    return json.loads(content)


@contextlib.contextmanager
def running_demo(log_path: pathlib.Path, *args: str) -> Iterator[str]:
    """Runs the demo with `args` on a free port; yields its base URL once it answers."""
    port = free_port()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "demos.glue_demo", "--port", str(port), *args],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"The demo exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"The demo did not answer in {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
            try:
                if call(base, "/get_info")[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[str]:
    with running_demo(tmp_path_factory.mktemp("demo") / "server.log") as base:
        yield base


@pytest.fixture(scope="module")
def info(demo) -> dict:
    return call_ok(demo, "/get_info")


@pytest.fixture(scope="module")
def examples(demo) -> list[dict]:
    return call_ok(demo, "/get_dataset", {"dataset_name": DATASET})


def full_config(info: dict, interpreter: str, **overrides: Any) -> dict:
    """Every config field at its default, as the UI sends it once settings are applied."""
    spec = info["interpreters"][interpreter]["configSpec"]
    return {name: field.get("default") for name, field in spec.items()} | overrides


def interpret(base: str, interpreter: str, inputs: list, config: dict | None = None) -> tuple[int, str, bytes]:
    params = {"model": MODEL, "dataset_name": DATASET, "interpreter": interpreter, "do_predict": "1"}
    return call(base, "/get_interpretations", params, {"inputs": inputs, "config": config})


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
    "empty text": ("/get_preds", {"model": MODEL, "dataset_name": DATASET}, {"inputs": [new_input("  ")]}, 400, "empty"),
    "text not a string": ("/get_preds", {"model": MODEL}, {"inputs": [{"id": "", "data": {"sentence": 3, "_id": ""}}]}, 400, "string"),
    "no inputs": ("/get_preds", {"model": MODEL, "dataset_name": DATASET}, {"config": {}}, 400, "inputs"),
    "unknown example id": ("/get_preds", {"model": MODEL, "dataset_name": DATASET}, {"inputs": [MARKUP]}, 400, "example id"),
    "malformed JSON": ("/get_preds", {"model": MODEL, "dataset_name": DATASET}, b'{"inputs": [' + MARKUP.encode(), 400, "Expecting"),
    "JSON list": ("/get_preds", {"model": MODEL, "dataset_name": DATASET}, [MARKUP], 400, "Malformed"),
    "unknown model": ("/get_preds", {"model": MARKUP, "dataset_name": DATASET}, {"inputs": []}, 404, "Unknown model"),
    "unknown dataset": ("/get_dataset", {"dataset_name": MARKUP}, None, 404, "Unknown dataset_name"),
    "unknown interpreter": ("/get_interpretations", {"model": MODEL, "dataset_name": DATASET, "interpreter": MARKUP}, {"inputs": []}, 404, "Unknown interpreter"),
    "unknown metrics": ("/get_metrics", {"model": MODEL, "dataset_name": DATASET, "metrics": MARKUP}, {"inputs": []}, 404, "Unknown metrics"),
    "unknown route": ("/get_" + urllib.parse.quote(MARKUP), None, {"inputs": []}, 404, "Not Found"),
    "traversal in a static path": ("/static/../../../../etc/passwd", None, None, 400, "Bad Request"),
    "notebook-only route": ("/push_ui_state", {"dataset_name": DATASET}, {"inputs": []}, 404, "notebooks"),
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


@pytest.mark.parametrize("route, params", [
    ("/create_model", {"model_name": MODEL}),
    ("/create_dataset", {"dataset_name": DATASET}),
])
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
        {"tiny": tiny_model}, {DATASET: datasets.builtin(4)},
        datapoints_dir=tmp_path / "points", allow_loading=True, client_root=str(offline_client.LIT_CLIENT_ROOT),
    )
    return werkzeug_test.Client(app)


def local_call(client: werkzeug_test.Client, route: str, params: dict[str, str], body: Any) -> tuple[int, str, bytes]:
    response = client.post(route, query_string=params, data=json.dumps(body), content_type="text/plain")
    return response.status_code, response.content_type, response.data


def test_datapoints_are_saved_and_loaded_inside_the_folder(local_app, tmp_path):
    examples = json.loads(local_call(local_app, "/get_dataset", {"dataset_name": DATASET}, {})[2])
    for path in ("mine", str(tmp_path / "points" / "abs")):
        status, _, body = local_call(local_app, "/save_datapoints", {"dataset_name": DATASET, "path": path}, {"inputs": examples[:2]})
        assert status == 200, body
        status, _, body = local_call(local_app, "/load_datapoints", {"dataset_name": DATASET, "path": path}, {"inputs": []})
        assert status == 200, body
        assert [ex["data"]["sentence"] for ex in json.loads(body)] == [ex["data"]["sentence"] for ex in examples[:2]]
    assert sorted(p.name for p in (tmp_path / "points").iterdir()) == [
        "abs.lit.jsonl", "abs.lit.jsonl.spec", "mine.lit.jsonl", "mine.lit.jsonl.spec",
    ]


@pytest.mark.parametrize("path", ["../escape", "/tmp/lit_sig_escape", "sub/../../escape", ".", "", "x/..", "a\x00b"])
def test_datapoint_paths_outside_the_folder_are_refused(local_app, tmp_path, path):
    for route in ("/save_datapoints", "/load_datapoints"):
        status, content_type, body = local_call(local_app, route, {"dataset_name": DATASET, "path": path}, {"inputs": []})
        assert status in (400, 403), body
        assert content_type.startswith("application/json") and "error" in json.loads(body)
    assert not list(tmp_path.glob("escape*")) and not list(pathlib.Path("/tmp").glob("lit_sig_escape*"))
    assert not list((tmp_path / "points").iterdir())


def test_missing_datapoints_file_is_404(local_app):
    status, _, body = local_call(local_app, "/load_datapoints", {"dataset_name": DATASET, "path": "absent"}, {"inputs": []})
    assert status == 404 and "error" in json.loads(body)


def test_loading_route_works_when_allowed(local_app):
    status, content_type, body = local_call(local_app, "/create_dataset", {"dataset_name": DATASET}, {"inputs": [], "config": {}})
    assert status != 403 and content_type.startswith("application/json"), body


def test_concurrent_mixed_requests_match_sequential(demo, info, examples):
    """8 clients at once (predict, IG, SIG) get exactly what each gets alone."""
    requests = [
        ("/get_preds", {"model": MODEL, "dataset_name": DATASET}, {"inputs": [new_input(f"Concurrent sentence {i}, rather good.")]})
        for i in range(3)
    ]
    for interpreter, steps, indices in ((IG, 16, (1, 2, 3)), (SIG, 6, (4, 5))):
        params = {"model": MODEL, "dataset_name": DATASET, "interpreter": interpreter, "do_predict": "1"}
        config = full_config(info, interpreter, **{"Interpolation steps": steps})
        requests += [("/get_interpretations", params, {"inputs": [examples[i]["id"]], "config": config}) for i in indices]
    assert len(requests) == 8

    sequential = [call_ok(demo, *request) for request in requests]
    barrier = threading.Barrier(len(requests))

    def send(request):
        barrier.wait()
        return call_ok(demo, *request)

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        concurrent_results = list(pool.map(send, requests))
    assert concurrent_results == sequential


def test_slow_sig_does_not_block_other_requests(demo, info, examples):
    longest = max(examples, key=lambda ex: len(ex["data"]["sentence"]))
    # The most steps: tens of seconds on a CPU, far longer than the quick requests even when
    # they share the cores with it.
    config = full_config(info, SIG, **{"Interpolation steps": 500})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(interpret, demo, SIG, [longest["id"]], config)
        time.sleep(0.5)  # Let SIG start.
        assert not slow.done(), "SIG finished too fast to tell"
        start = time.monotonic()
        assert call(demo, "/get_info")[0] == 200
        call_ok(demo, "/get_preds", {"model": MODEL, "dataset_name": DATASET}, {"inputs": [new_input("Not blocked at all.")]})
        quick_s = time.monotonic() - start
        assert not slow.done(), f"the quick requests waited for SIG ({quick_s:.1f} s)"
        assert slow.result()[0] == 200


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
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
