"""The demo's LIT HTTP API, as the web UI calls it, on a real server process.

The server runs `python -m demos.glue_demo` with the embedded model, started
once for this module. Also: JSON errors, refused loading and file access,
concurrency, and the demo's command-line errors.
"""

import concurrent.futures
import json
import math
import os
import pathlib
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
import torch
from werkzeug import test as werkzeug_test

from lit_sig.models import datasets
from lit_sig.serving import offline_client, server
from tests.helpers import (
    DATASET,
    IG,
    LIT_SIG_INTERPRETERS,
    MODEL,
    REPO,
    SIG,
    assert_json_error,
    call,
    call_ok,
    free_port,
    full_config,
    interpret,
    new_input,
)

MARKUP = "<script>alert('lit')</script>"


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


PREDS_PARAMS = {"model": MODEL, "dataset_name": DATASET}
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
    # Issue 23: client mistakes that were bare 500s.
    "input without an id": (
        "/get_preds",
        PREDS_PARAMS,
        {"inputs": [{"data": {"sentence": "no id here", "label": ""}}]},
        400,
        '"id"',
    ),
    "ndarray marker on /get_info": ("/get_info", None, {"x": {"__class__": "np.ndarray"}}, 400, "type markers"),
    "tuple marker": ("/get_info", None, {"x": {"__class__": "tuple", "__value__": 1}}, 400, "type markers"),
    "DataTuple marker": ("/get_dataset", {"dataset_name": DATASET}, {"x": {"__class__": "DataTuple"}}, 400, "type"),
    "LitType marker": ("/get_info", None, {"x": {"__name__": "Any"}}, 400, "type markers"),
    "data decoding to an ndarray": (
        "/get_preds",
        PREDS_PARAMS,
        {"inputs": [{"id": "", "data": {"__class__": "np.ndarray", "__value__": [1]}}]},
        400,
        "type markers",
    ),
    "data decoding to a LitType": (
        "/get_preds",
        PREDS_PARAMS,
        {"inputs": [{"id": "", "data": {"__name__": "TextSegment"}}]},
        400,
        "type markers",
    ),
    "JSON nested 971 deep": ("/get_preds", PREDS_PARAMS, b'{"inputs":' + b"[" * 970 + b"]" * 970 + b"}", 400, "nested"),
    "JSON nested 973 deep in steps": (
        "/get_interpretations",
        PREDS_PARAMS | {"interpreter": SIG},
        b'{"inputs":[],"config":{"Interpolation steps":' + b"[" * 971 + b"]" * 971 + b"}}",
        400,
        "nested",
    ),
    "lone surrogate in a prediction": (
        "/get_preds",
        PREDS_PARAMS,
        b'{"inputs":[{"id":"","data":{"sentence":"a \\ud800 b","label":""}}]}',
        400,
        "surrogate",
    ),
    "lone surrogate in SIG": (
        "/get_interpretations",
        PREDS_PARAMS | {"interpreter": SIG},
        b'{"inputs":[{"id":"","data":{"sentence":"\\ud800","label":""}}],"config":{"Interpolation steps":3}}',
        400,
        "surrogate",
    ),
    "TCAV {}": (
        "/get_interpretations",
        PREDS_PARAMS | {"interpreter": "tcav"},
        {"inputs": [], "config": {}},
        400,
        "tcav",
    ),
    "Salience Clustering {}": (
        "/get_interpretations",
        PREDS_PARAMS | {"interpreter": "Salience Clustering"},
        {"inputs": [], "config": {}},
        400,
        "Salience Mapper",
    ),
    "Salience Clustering 1e309 clusters": (
        "/get_interpretations",
        PREDS_PARAMS | {"interpreter": "Salience Clustering"},
        b'{"inputs":[],"config":{"Salience Mapper":"Grad L2 Norm","Number of clusters":1e309}}',
        400,
        "finite",
    ),
    "PCA of a field that is not an embedding": (
        "/get_interpretations",
        PREDS_PARAMS | {"interpreter": "pca"},
        {"inputs": [], "config": {"field_name": "probas", "proj_kw": {"n_components": 3}}},
        400,
        "field_name",
    ),
    "PCA with 4 components": (
        "/get_interpretations",
        PREDS_PARAMS | {"interpreter": "pca"},
        {"inputs": [], "config": {"field_name": "mean_pooled_emb", "proj_kw": {"n_components": 4}}},
        400,
        "n_components",
    ),
    "nearest neighbors of a field that is not an embedding": (
        "/get_interpretations",
        PREDS_PARAMS | {"interpreter": "nearest neighbors"},
        {"inputs": [new_input("a sentence")], "config": {"embedding_name": "probas", "num_neighbors": 2}},
        400,
        "embedding_name",
    ),
    "Ablation Flip {}": (
        "/get_generated",
        PREDS_PARAMS | {"generator": "Ablation Flip"},
        {"inputs": [], "config": {}},
        400,
        "Max number of token ablations",
    ),
    "LIT IG with some keys": (
        "/get_interpretations",
        PREDS_PARAMS | {"interpreter": "Integrated Gradients"},
        {"inputs": [], "config": {"Interpolation steps": 10}},
        400,
        "Normalize",
    ),
    "unknown requested type": (
        "/get_preds",
        PREDS_PARAMS | {"requested_types": "Tokens,NoSuchType"},
        {"inputs": [new_input("a sentence")]},
        400,
        "LitType",
    ),
    "post_new_data is off": (
        "/post_new_data",
        {"dataset_name": DATASET},
        {"inputs": [{"sentence": "stored for others", "label": "1"}]},
        403,
        "--allow_new_data",
    ),
    "post_new_data without an id, off": (
        "/post_new_data",
        {"dataset_name": DATASET},
        {"inputs": [{"data": {"sentence": "x"}}]},
        403,
        "--allow_new_data",
    ),
    "post_new_data empty, off": ("/post_new_data", {"dataset_name": DATASET}, b"", 403, "--allow_new_data"),
    "fetch_new_data is off": ("/fetch_new_data", {"saved_datapoints_id": "0" * 32}, None, 403, "--allow_new_data"),
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
    # Issue 23: strict keys; a config that LIT's Salience Clustering hands to LIT's IG and LIME keeps their caps.
    "captum class 0": ("captum Saliency", {"Class to explain": 0}, "class name string"),
    "captum class false": ("captum Occlusion", {"Class to explain": False}, "class name string"),
    "captum class []": ("captum Lime", {"Class to explain": []}, "class name string"),
    "SIG steps full-width": (SIG, {"Interpolation steps": "\uff15"}, "Interpolation steps"),
    "IG steps full-width": (IG, {"Interpolation steps": "\uff15"}, "Interpolation steps"),
    "LIT IG steps full-width": ("Integrated Gradients", {"Interpolation steps": "\uff15"}, "Interpolation steps"),
    "Occlusion wider than the sentence": ("captum Occlusion", {"sliding_window_shapes": 16}, "wider"),
    "Salience Clustering with IG 1000 steps": (
        "Salience Clustering",
        {"Salience Mapper": "Integrated Gradients", "Interpolation steps": 1000, "Number of clusters": 2},
        "[5, 100]",
    ),
    "Salience Clustering with LIME 2000 samples": (
        "Salience Clustering",
        {"Salience Mapper": "LIME", "Number of samples": 2000, "Number of clusters": 2},
        "Number of samples",
    ),
    "Salience Clustering, more clusters than examples": (
        "Salience Clustering",
        {"Salience Mapper": "Grad L2 Norm", "Number of clusters": 5},
        "at most as many clusters",
    ),
}


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
    command_lines = [["--port", str(free_port()), *args] for args in cases]
    done = subprocess.run(  # One import of the demo, each command line's main() in a fork of it.
        [sys.executable, "-m", "tests.forked_main", "demos.glue_demo", json.dumps(command_lines)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    for args, result in zip(cases, json.loads(done.stdout.strip().splitlines()[-1])):
        err = result["stderr"]
        assert result["status"] != 0, f"{args}: exit 0\n{result['stdout']}{err}"
        assert result["status"] != -14, f"{args}: still running"
        assert "Traceback" not in err, f"{args}:\n{err}"
        assert cases[args] in err, f"{args}:\n{err}"
        assert len(err.strip().splitlines()) <= 3, f"{args}: more than a clear error\n{err}"


def test_a_result_stays_with_its_data(demo, examples):
    """Client B sends client A's example id with other text: B gets its own result, never A's, and A still
    gets A's, whichever asks first, with or without a data set to look the id up in."""
    negative = next(ex for ex in examples[::-1] if ex["data"]["label"] == "0")
    a_id, a_text = negative["id"], negative["data"]["sentence"]
    b_text = "A wonderful, warm and utterly delightful film."
    with_dataset, without = {"model": MODEL, "dataset_name": DATASET}, {"model": MODEL}

    def preds(params, entry):
        (result,) = call_ok(demo, "/get_preds", params, {"inputs": [entry]})
        return result["probas"]

    b_alone = preds(with_dataset, new_input(b_text))
    a_alone = preds(with_dataset, new_input(a_text))
    assert abs(b_alone[1] - a_alone[1]) > 0.5  # The model tells them apart.
    spoofs = [
        new_input(b_text, a_id),  # id and _id of A
        {"id": "", "data": {"sentence": b_text, "label": "", "_id": a_id}},  # _id of A only
        {"id": a_id, "data": {"sentence": b_text, "label": "0"}},  # id of A only
    ]
    assert preds(with_dataset, spoofs[0]) == b_alone  # Before A was ever cached.
    assert preds(with_dataset, a_id) == a_alone  # A by id, cached now.
    for params in (with_dataset, without):
        for spoof in spoofs:
            assert preds(params, spoof) == b_alone  # Probabilities don't depend on the label.
    assert preds(with_dataset, a_id) == a_alone
    # Interpretations with do_predict go through the same cache.
    config = {"Interpolation steps": 4, "Normalize": False}
    (spoofed,) = json.loads(interpret(demo, IG, [spoofs[0]], config)[2])
    (alone,) = json.loads(interpret(demo, IG, [new_input(b_text)], config)[2])
    assert spoofed == alone


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "TRACE", "OPTIONS", "HEAD"])
def test_only_get_and_post_reach_the_api(demo, method):
    for route, allowed in (("/get_info", "GET, POST"), ("/get_preds", "GET, POST"), ("/static/index.html", None)):
        if allowed is None and method == "HEAD":
            continue  # A file may be asked for its headers.
        request = urllib.request.Request(
            demo + route, data=b"{}" if method in ("PUT", "PATCH") else None, method=method
        )
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=60)
        assert raised.value.code == 405
        assert raised.value.headers["Allow"] == (allowed or "GET, HEAD")
        if method != "HEAD":
            assert_json_error(405, raised.value.headers["Content-Type"], raised.value.read(), 405, "allowed")
    # The UI's files take HEAD, by choice (RFC 9110: HEAD wherever GET): GET's status and type, no body.
    for route, kind in (("/", "text/html"), ("/main.js", "javascript")):
        request = urllib.request.Request(demo + route, method="HEAD")
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200 and kind in response.headers["Content-Type"] and response.read() == b""


def test_a_valid_projection_and_neighbour_search_still_run(demo, examples):
    """The checks refuse bad PCA / nearest-neighbour configs (above) but let LIT's own work through."""
    ids = [ex["id"] for ex in examples[:4]]
    params = PREDS_PARAMS | {"interpreter": "pca"}
    config = {"field_name": "mean_pooled_emb", "proj_kw": {"n_components": 3}}
    projected = call_ok(demo, "/get_interpretations", params, {"inputs": ids, "config": config})
    assert len(projected) == 4 and all(len(p["z"]) == 3 for p in projected)
    params = PREDS_PARAMS | {"interpreter": "nearest neighbors"}
    config = {"embedding_name": "mean_pooled_emb", "num_neighbors": 2}
    (found,) = call_ok(demo, "/get_interpretations", params, {"inputs": ids[:1], "config": config})
    assert [n["id"] for n in found["nearest_neighbors"]][0] == ids[0]  # An example is its own nearest.
