"""The LM demo's HTTP API as LIT's client calls it, on a real server process (`python -m demos.lm_demo`).

Served Sequence Salience and Salience Maps equal a notebook's `interpreter.run()` on the same
model (a tiny random chat Llama saved to a folder, `--model`), prompt, target and span.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import transformers

import lit_sig
from lit_sig.lit import sequence_salience
from lit_sig.models import datasets
from lit_sig.serving import lm_demo as lm_demo_lib
from lit_sig.serving import offline_client, server
from tests.helpers import REPO, SEQUENCE_SALIENCE_NOTEBOOK, added_input, call, call_ok, serving

DATASET = lm_demo_lib.DATASET
FIELDS = ("grad_l2", "grad_dot_input", "exact_sig", "ig")  # As the lm_demo fixture serves them.
SIG = "Sequential Integrated Gradients"


@pytest.fixture(scope="module")
def name(tiny_lm_dir) -> str:
    return lm_demo_lib.model_name(str(tiny_lm_dir))


@pytest.fixture(scope="module")
def notebook_lm(tiny_lm_dir) -> lit_sig.HFCausalLM:
    """The demo's model, loaded in this process as a notebook would."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_lm_dir)
    module = transformers.AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    return lit_sig.HFCausalLM(module, tokenizer, device="cpu", chat_template=True, max_new_tokens=6)


@pytest.fixture(scope="module")
def lm_info(lm_demo) -> dict:
    return call_ok(lm_demo, "/get_info")


@pytest.fixture(scope="module")
def prompts(lm_demo) -> list[dict]:
    return call_ok(lm_demo, "/get_dataset", {"dataset_name": DATASET})


def preds(base: str, model: str, data: dict, types: str) -> dict:
    params = {"model": model, "dataset_name": DATASET, "requested_types": types}
    return call_ok(base, "/get_preds", params, {"inputs": [added_input(data)]})[0]


def test_info_serves_the_model_group_the_module_looks_for(lm_info, name):
    assert list(lm_info["models"]) == [name, f"_{name}_salience", f"_{name}_tokenizer"]
    salience_spec = lm_info["models"][f"_{name}_salience"]["spec"]["output"]
    assert [k for k, v in salience_spec.items() if v["__name__"] == "TokenScores"] == list(FIELDS)
    assert lm_info["defaultLayout"] == lm_demo_lib.LAYOUT_NAME
    assert {"left_right", "top_bottom", "three_panel", lm_demo_lib.LAYOUT_NAME} <= set(lm_info["layouts"])
    layout = lm_info["layouts"][lm_demo_lib.LAYOUT_NAME]
    modules = [m for group in ("left", "upper", "lower") for tab in layout[group].values() for m in tab]
    assert "sequence-salience-module" in modules and "salience-map-module" in modules
    for interpreter in ("lit_sig Integrated Gradients", SIG, "captum FeatureAblation"):
        assert interpreter in lm_info["models"][name]["interpreters"], interpreter
    assert len(lm_info["datasets"][DATASET]["spec"]) == 3  # prompt, target, source


def test_served_sequence_salience_equals_notebook(lm_demo, name, prompts, notebook_lm):
    data = {k: v for k, v in prompts[3]["data"].items() if not k.startswith("_")}  # "What is the capital ..."
    tokens = preds(lm_demo, f"_{name}_tokenizer", data, "Tokens")["tokens"]
    assert tokens == notebook_lm.tokenize([data])[0]
    target_length = len(notebook_lm.tokenizer(data["target"], add_special_tokens=False).input_ids)
    start = len(tokens) - target_length + 1  # The target's second and third tokens, as a user would click them.
    mask = [1 if start <= i < start + 2 else 0 for i in range(len(tokens))]
    served = preds(lm_demo, f"_{name}_salience", data | {"target_mask": mask}, "Tokens,TokenScores")
    assert served["tokens"] == tokens and set(FIELDS) <= set(served)
    example = data | {"target_mask": mask}
    for field in FIELDS:
        interpreter, config = SEQUENCE_SALIENCE_NOTEBOOK[field]
        notebook = getattr(lit_sig, interpreter)().run([example], notebook_lm, config=config)[0]["token_grad"]
        np.testing.assert_allclose(served[field], notebook.salience, rtol=1e-5, atol=1e-6, err_msg=field)
        assert not np.any(served[field][start + 1 :]), field  # Nothing from the last selected token on.
        assert np.abs(served[field]).max() > 0, field


def test_served_salience_maps_equal_notebook(lm_demo, name, prompts, lm_info, notebook_lm):
    """The methods with settings, as LIT's Salience Maps module asks for them (here: path SIG, 8 steps)."""
    spec = lm_info["interpreters"][SIG]["configSpec"]
    config = {key: field.get("default") for key, field in spec.items()} | {"Interpolation steps": 8}
    assert config["Baseline"] == "zero"
    example = prompts[6]
    params = {"model": name, "dataset_name": DATASET, "interpreter": SIG, "do_predict": "1"}
    served = call_ok(lm_demo, "/get_interpretations", params, {"inputs": [example["id"]], "config": config})[0]
    data = {k: v for k, v in example["data"].items() if not k.startswith("_")}
    notebook = lit_sig.SequentialIntegratedGradients().run([data], notebook_lm, config=config)[0]["token_grad"]
    assert served["token_grad"]["tokens"] == list(notebook.tokens)
    np.testing.assert_allclose(served["token_grad"]["salience"], notebook.salience, rtol=1e-5, atol=1e-6)


def test_sequence_salience_is_priced_by_what_it_runs(notebook_lm):
    """The module's one request runs every field: the gradient pass (a row per input, read by grad_l2 and
    grad_dot_input), exact SIG (T + 1 rows per token) and IG (50 steps: 51 rows), on the T tokens of prompt
    and target: T x (T + 53) token-rows. One token-row over the cap is 413 naming both; at the cap it runs,
    through the heavy-work gate (which refuses it once its best measured rate is 1 token-row/s), while the LM's
    own predictions stay unpriced."""
    prompts = datasets.builtin_prompts()
    data = {k: v for k, v in prompts.examples[3].items() if not k.startswith("_")}
    tokens = notebook_lm.tokenize([data])[0]
    count = len(tokens)
    expected = count * (count + 1 + 51 + 1)
    body = {"inputs": [added_input(data | {"target_mask": [0] * (count - 1) + [1]})]}
    params = {"model": "_lm_salience", "dataset_name": DATASET, "requested_types": "Tokens,TokenScores"}
    plain = (params | {"model": "lm"}, {"inputs": [added_input(data)]})
    for cap in (expected - 1, expected):
        limits = server.Limits(max_request_cost=cap, light_request_cost=1)
        group = sequence_salience.model_group("lm", notebook_lm, FIELDS)
        app = server.HardenedLitApp(
            group, {DATASET: prompts}, limits=limits, interpreters={}, client_root=str(offline_client.LIT_CLIENT_ROOT)
        )
        with serving(app, limits) as base:
            status, _, answer = call(base, "/get_preds", params, body)
            if cap < expected:
                error = json.loads(answer)["error"]
                assert status == 413 and f"run {expected:,} token-rows" in error and f"limit is {cap:,}" in error
                continue
            assert status == 200, answer[:500]
            (served,) = json.loads(answer)
            assert served["tokens"] == tokens and set(FIELDS) <= set(served)
            app.admission.throughput.peak = 1.0
            status, _, answer = call(base, "/get_preds", params, body)
            assert status == 503 and "even alone" in json.loads(answer)["error"], answer[:500]
            assert call(base, "/get_preds", *plain)[0] == 200


def test_the_client_draws_lit_sigs_signed_fields_signed(lm_demo):
    status, content_type, js = call(lm_demo, "/main.js")
    assert status == 200 and "javascript" in content_type
    names = js.decode().split(".includes(this.selectedSalienceMethod)")[0].rsplit("[", 1)[1]
    signed = json.loads("[" + names)
    assert {"grad_dot_input", "exact_sig", "ig", "sig", "captum_kernelshap"} <= set(signed) and "grad_l2" not in signed
    status, _, index = call(lm_demo, "/")
    assert status == 200 and b"fonts.googleapis.com" not in index


def test_a_bad_salience_span_is_a_clear_400(lm_demo, name, prompts):
    data = {k: v for k, v in prompts[0]["data"].items() if not k.startswith("_")}
    params = {"model": f"_{name}_salience", "dataset_name": DATASET, "requested_types": "TokenScores"}
    status, _, body = call(lm_demo, "/get_preds", params, {"inputs": [added_input(data | {"target_mask": [1, 0]})]})
    assert status == 400 and b"target_mask" in body, body[:500]
    assert call(lm_demo, "/get_info")[0] == 200  # Still serving.


def test_a_bad_flag_is_one_line_and_status_2():
    """Checked before any model loads; the other set-up errors take the same path (`server.run`)."""
    done = subprocess.run(
        [sys.executable, "-m", "demos.lm_demo", "--port", "0", "--sequence_salience", "grad_l2,lime"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: --sequence_salience: Sequence Salience fields ['grad_l2', 'lime']: give each at least once and"
        " once only, from: ['grad_l2', 'grad_dot_input', 'sig', 'exact_sig', "
    ), last
    assert "'captum_lime'" in last


def test_set_up_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="--model=/no/such/folder: not a folder; give a local"):
        lm_demo_lib.load_lm("/no/such/folder", "cpu", "float32", 4, None, None)
    with pytest.raises(ValueError, match="is not a file"):
        datasets.prompts_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    for line, message in [
        ('{"target": "x"}', "bad.jsonl:1: expected an object with a non-empty 'prompt' string"),
        ('{"prompt": "p", "target": 3}', "bad.jsonl:1: 'target' must be strings"),
        ("not json", "bad.jsonl:1: not JSON"),
    ]:
        bad.write_text(line + "\n")
        with pytest.raises(ValueError, match=message):
            datasets.prompts_jsonl(bad)
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "Hi?"}\n\n{"prompt": "2+2?", "target": "4", "source": "math"}\n')
    data = datasets.prompts_jsonl(good)
    assert data.examples == [
        {"prompt": "Hi?", "target": "", "source": ""},
        {"prompt": "2+2?", "target": "4", "source": "math"},
    ]
    assert len(datasets.builtin_prompts().examples) == 12
    assert {e["source"] for e in datasets.builtin_prompts().examples} == set(datasets.PROMPT_KINDS)
