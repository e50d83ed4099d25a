"""What the served LIT UI shows equals what a notebook computes, for every interpreter and baseline.

The demo runs as a real HTTP server (LIT wraps its model in `CachingModelWrapper`);
the notebook side is `interpreter.run()` on `models.minilm_sst2()` in this process.
"""

import json

import numpy as np
import pytest

import lit_sig
from lit_sig import models
from lit_sig.lit import captum_bridge, interpreters
from tests.helpers import IG, LIT_SIG_INTERPRETERS, SIG, full_config, interpret

SENTENCE_INDEX = 1
NOTEBOOK = {
    "lit_sig Gradient Norm": lit_sig.GradientNorm,
    "lit_sig Gradient x Input": lit_sig.GradientDotInput,
    IG: lit_sig.IntegratedGradients,
    SIG: lit_sig.SequentialIntegratedGradients,
}
CASES = (
    [(name, None) for name in LIT_SIG_INTERPRETERS[:2]]
    + [
        (name, {interpreters.BASELINE_KEY: baseline, interpreters.INTERPOLATION_KEY: 12})
        for name in (IG, SIG)
        for baseline in interpreters.BASELINES
    ]
    + [(SIG, {interpreters.METHOD_KEY: interpreters.EXACT_METHOD, interpreters.BASELINE_KEY: "mask"})]
    + [  # Inside the model: at a layer (every position, [CLS]/[SEP] included) and for a neuron.
        (SIG, {interpreters.METHOD_KEY: interpreters.EXACT_METHOD, "Layer": "3"}),
        (IG, {interpreters.INTERPOLATION_KEY: 12, "Layer": "5", "Neuron": "6:17:0"}),
        ("lit_sig Gradient x Input", {"Layer": "2"}),
        ("lit_sig Gradient Norm", {"Neuron": "4:100"}),
        ("captum FeatureAblation", {"Layer": "1"}),
    ]
    + [
        ("captum FeatureAblation", {interpreters.BASELINE_KEY: "pad"}),
        ("captum InputXGradient", {}),
        ("captum KernelShap", {"n_samples": 30, "seed": 7}),
    ]
)
for name in captum_bridge.METHODS:
    NOTEBOOK[f"captum {name}"] = lambda name=name: captum_bridge.CaptumInterpreter(name)


@pytest.fixture(scope="module")
def served_example(examples) -> dict:
    return examples[SENTENCE_INDEX]


@pytest.mark.parametrize("name, overrides", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_served_salience_equals_notebook(demo, info, served_example, sst2, name, overrides):
    config = None if overrides is None else full_config(info, name, **overrides)
    status, _, body = interpret(demo, name, [served_example["id"]], config)
    assert status == 200, body[:2000]
    ui = json.loads(body)[0][models.gradients_field("sentence")]
    example = {k: v for k, v in served_example["data"].items() if not k.startswith("_")}
    notebook = NOTEBOOK[name]().run([example], sst2, None, config=config)[0][models.gradients_field("sentence")]
    assert ui["tokens"] == list(notebook.tokens)
    np.testing.assert_allclose(ui["salience"], notebook.salience, rtol=1e-5, atol=1e-6)


def test_served_mask_and_zero_baselines_differ(demo, info, served_example):
    """The bug this file guards against: the served [MASK] baseline silently became zeros."""
    by_baseline = {}
    for baseline in ("mask", "zero"):
        config = full_config(
            info,
            SIG,
            **{interpreters.BASELINE_KEY: baseline, interpreters.METHOD_KEY: interpreters.EXACT_METHOD},
        )
        status, _, body = interpret(demo, SIG, [served_example["id"]], config)
        assert status == 200, body[:2000]
        by_baseline[baseline] = np.array(json.loads(body)[0][models.gradients_field("sentence")]["salience"])
    assert np.abs(by_baseline["mask"] - by_baseline["zero"]).max() > 1e-3


def test_captum_methods_are_served(demo, info):
    """Every bridged method is offered for the served model, marked as from captum."""
    model = next(iter(info["models"]))
    for name in captum_bridge.METHODS:
        assert f"captum {name}" in info["interpreters"]
        assert f"captum {name}" in info["models"][model]["interpreters"]


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        (SIG, {"Layer": "9"}, "Layer 9 doesn't exist: BertForSequenceClassification has layers 0..6"),
        (IG, {"Neuron": "2:384"}, "unit 384 doesn't exist; layer 2 has units 0..383"),
        ("lit_sig Gradient Norm", {"Layer": "top"}, "'Layer' must be 'embeddings'"),
    ],
)
def test_a_layer_or_neuron_that_does_not_exist_is_a_400_naming_the_range(
    demo, info, served_example, name, overrides, message
):
    status, _, body = interpret(demo, name, [served_example["id"]], full_config(info, name, **overrides))
    assert status == 400 and message in json.loads(body)["error"], body[:2000]
