"""Checks against independent references: time-interpret's SIG, LIT's own IG, direct Hugging Face calls."""

import numpy as np
import pytest
import torch
from lit_nlp.components import gradient_maps

import lit_sig
from lit_sig import models
from lit_sig.core import attribution, engine, quadrature
from lit_sig.lit import interpreters, protocol
from tests.helpers import CASES, PAIR, SENTENCE, PassRecorder, captum_ig, occlusion, salience, salience_fields

RAW = {interpreters.NORMALIZATION_KEY: False}


def word_embeddings(model: models.HFSequenceClassifier, texts: tuple[str, ...]):
    """`(full [L, D], word positions, the tokenizer's encoding)` of a direct Hugging Face call."""
    encoding = model.tokenizer(*texts, return_tensors="pt")
    with torch.no_grad():
        full = model.model.get_input_embeddings()(encoding["input_ids"])[0]
    words = [i for i, s in enumerate(encoding.sequence_ids(0)) if s is not None]
    return full, words, encoding


def direct_score(model: models.HFSequenceClassifier, embs: torch.Tensor, encoding, target: int) -> float:
    with torch.no_grad():
        logits = model.model(inputs_embeds=embs[None], token_type_ids=encoding.get("token_type_ids")).logits
    return float(logits[0, target])


def test_sig_equals_time_interpret(tiny_model):
    tint_attr = pytest.importorskip("tint.attr")
    full, words, encoding = word_embeddings(tiny_model, (SENTENCE,))
    mask = tiny_model.baseline_embedding("input_embs_sentence", "mask")
    baseline = torch.as_tensor(mask).expand(len(words), -1)

    def forward(word_embs: torch.Tensor) -> torch.Tensor:  # [N, T, D] -> [N, C]
        N = word_embs.shape[0]
        embs = torch.cat([full[:1].expand(N, 1, -1), word_embs, full[-1:].expand(N, 1, -1)], dim=1)
        return tiny_model.model(inputs_embeds=embs).logits

    theirs = (
        tint_attr.SequentialIntegratedGradients(forward)
        .attribute(full[words][None], baselines=baseline[None], target=1, n_steps=20)[0]
        .sum(-1)
        .detach()
        .numpy()
    )
    ours = salience(
        lit_sig.SequentialIntegratedGradients().run(
            [{"sentence": SENTENCE}],
            tiny_model,
            None,
            config={**RAW, interpreters.CLASS_KEY: "1", interpreters.INTERPOLATION_KEY: 20},
        )[0]
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())


def test_lit_builtin_ig_on_our_model_equals_its_formula(tiny_model):
    """LIT 1.3's IG, computed by hand with direct Hugging Face gradients.

    LIT interpolates n + 1 points from a zero baseline but evaluates only the first
    n (alpha = k / n, k < n) and averages their n - 1 trapezoid midpoints.
    """
    example = {"sentence": SENTENCE, "label": "1"}
    steps = 10
    lit = gradient_maps.IntegratedGradients().run(
        [example],
        tiny_model,
        None,
        config={
            gradient_maps.INTERPOLATION_KEY: steps,
            gradient_maps.NORMALIZATION_KEY: False,
            gradient_maps.CLASS_KEY: "1",
        },
    )[0]
    full, words, encoding = word_embeddings(tiny_model, (SENTENCE,))
    x = full[words]  # [T, D]
    grads = []
    for k in range(steps):
        embs = full.clone()
        embs[words] = k / steps * x
        embs.requires_grad_(True)
        logit = tiny_model.model(inputs_embeds=embs[None], token_type_ids=encoding["token_type_ids"]).logits[0, 1]
        grads.append(torch.autograd.grad(logit, embs)[0][words])
    integral = torch.stack([(a + b) / 2 for a, b in zip(grads[:-1], grads[1:])]).mean(0)  # [T, D]
    expected = (integral * x).sum(-1).detach().numpy()
    np.testing.assert_allclose(salience(lit), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_rows_per_pass_change_nothing_and_sig_sums_to_direct_occlusion(tiny_model):
    """The engine's passes hold what the scorer asks for: one row per pass must change nothing.
    Both are held to direct occlusion calls: SIG's per-token completeness, within its delta."""
    (prepared,) = tiny_model.path_inputs([{"sentence": SENTENCE}], ["1"], ["input_embs_sentence"])
    x = prepared.x
    problem = engine.PathProblem(
        prepared, x, torch.zeros_like(x), attribution.sig_groups(torch.ones(len(x), dtype=bool))
    )
    rule = quadrature.quadrature("gausslegendre", 6)
    whole_passes = PassRecorder(tiny_model, rows_per_pass=1000)
    (whole,) = engine.path_attributions([problem], whole_passes, *rule, keep_dimensions=True)
    assert whole_passes.passes == [(1, len(x) * 6, True), (1, len(x) + 1, False)]  # Gradient rows, then endpoints.
    single_rows = PassRecorder(tiny_model, rows_per_pass=1)
    (one,) = engine.path_attributions([problem], single_rows, *rule, keep_dimensions=True)
    assert [rows for _, rows, _ in single_rows.passes] == [1] * (len(x) * 7 + 1)
    np.testing.assert_allclose(one.attributions, whole.attributions, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(one.group_deltas, whole.group_deltas, atol=1e-6)
    exact = occlusion(tiny_model, (SENTENCE,), 1, "zero")
    np.testing.assert_allclose(exact - whole.token_attributions.numpy(), whole.group_deltas, atol=1e-5)


def test_pair_scores_and_token_types_equal_a_direct_call(tiny_pair_model):
    out = tiny_pair_model.predict([dict(PAIR, label="neutral")])[0]
    full, _, encoding = word_embeddings(tiny_pair_model, (PAIR["sentence1"], PAIR["sentence2"]))
    assert encoding["token_type_ids"][0].tolist().count(1) > 0
    with torch.no_grad():
        logits = tiny_pair_model.model(**encoding).logits[0]
        without_types = tiny_pair_model.model(input_ids=encoding["input_ids"]).logits[0]
    np.testing.assert_allclose(out["probas"], torch.softmax(logits, -1).numpy(), rtol=1e-5)
    assert out[protocol.TARGET_SCORE_FIELD] == pytest.approx(float(logits[1]), rel=1e-5)
    assert not np.allclose(torch.softmax(without_types, -1).numpy(), out["probas"], atol=1e-4)


def test_special_tokens_keep_their_own_embeddings(tiny_model):
    """Given word embeddings replace only the word tokens: [CLS]/[SEP] are the table's."""
    full, words, encoding = word_embeddings(tiny_model, ("good film",))
    zeros = np.zeros((len(words), full.shape[-1]), dtype=np.float32)
    out = tiny_model.predict([{"sentence": "good film", "label": "1", "input_embs_sentence": zeros}])[0]
    words_zeroed = full.clone()
    words_zeroed[words] = 0.0
    assert out[protocol.TARGET_SCORE_FIELD] == pytest.approx(
        direct_score(tiny_model, words_zeroed, encoding, 1), rel=1e-5
    )
    everything_zeroed = torch.zeros_like(full)
    assert out[protocol.TARGET_SCORE_FIELD] != pytest.approx(
        direct_score(tiny_model, everything_zeroed, encoding, 1), rel=1e-3
    )


@pytest.mark.parametrize("case", ["pair", "regression"])
def test_sig_per_token_completeness_against_occlusion(request, case):
    """50-step SIG of each token is within its reported delta of a direct occlusion of its id."""
    fixture, example = CASES[case]
    model = request.getfixturevalue(fixture)
    result = lit_sig.SequentialIntegratedGradients().run([example], model, None, config=RAW)[0]
    ours = np.concatenate([salience(result, f) for f in salience_fields(model)])
    target = 0 if model.labels is None else model.labels.index(example["label"])
    exact = occlusion(model, tuple(example[f] for f in model.text_fields), target, "mask")
    assert np.abs(ours - exact).max() <= result[interpreters.COMPLETENESS_KEY] + 1e-6
    assert result[interpreters.COMPLETENESS_KEY] < 1e-3 * np.abs(exact).max()


@pytest.mark.parametrize("case", ["pair", "regression"])
def test_ig_completeness_against_a_direct_call(request, case):
    """IG sums to F(x) - F(every word token at [MASK]), both from direct calls, up to its delta."""
    fixture, example = CASES[case]
    model = request.getfixturevalue(fixture)
    result = lit_sig.IntegratedGradients().run([example], model, None, config=RAW)[0]
    total = sum(salience(result, f).sum() for f in salience_fields(model))
    full, words, encoding = word_embeddings(model, tuple(example[f] for f in model.text_fields))
    target = 0 if model.labels is None else model.labels.index(example["label"])
    at_baseline = full.clone()
    at_baseline[words] = torch.as_tensor(
        model.baseline_embedding(models.embeddings_field(model.text_fields[0]), "mask")
    )
    gap = direct_score(model, full, encoding, target) - direct_score(model, at_baseline, encoding, target)
    assert gap - total == pytest.approx(result[interpreters.COMPLETENESS_KEY], abs=1e-5)
    assert abs(gap - total) < 1e-2 * abs(gap)


@pytest.mark.parametrize("interpreter", [lit_sig.IntegratedGradients, lit_sig.SequentialIntegratedGradients])
def test_a_class_other_than_the_predicted_one(tiny_model, interpreter):
    """`Class to explain` set to the class the model does not predict: IG equals captum's IG for that
    logit, and exact SIG the occlusion of that logit."""

    predicted = tiny_model.predict([{"sentence": SENTENCE}])[0]["label"]
    other = "0" if predicted == "1" else "1"
    config = {**RAW, interpreters.CLASS_KEY: other}
    if interpreter is lit_sig.IntegratedGradients:
        ours = salience(interpreter().run([{"sentence": SENTENCE}], tiny_model, None, config=config)[0])
        theirs = captum_ig(tiny_model, SENTENCE, int(other), "gausslegendre", interpreters.DEFAULT_STEPS)
    else:
        config[interpreters.METHOD_KEY] = interpreters.EXACT_METHOD
        ours = salience(interpreter().run([{"sentence": SENTENCE}], tiny_model, None, config=config)[0])
        theirs = occlusion(tiny_model, (SENTENCE,), int(other), "mask")
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())
