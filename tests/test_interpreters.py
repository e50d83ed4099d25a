"""Axioms, agreement with captum and LIT, and config validation of the interpreters."""

import dataclasses
import types as pytypes

import numpy as np
import pytest
import torch
from lit_nlp.components import gradient_maps
from lit_nlp.lib import caching

import lit_sig
from lit_sig import models
from lit_sig.core import quadrature
from lit_sig.lit import config, interpreters, protocol
from tests.helpers import RAW, SENTENCE, PredictOnly, captum_ig, occlusion, salience, tiny_bert


@pytest.mark.parametrize("method", quadrature.METHODS)
def test_ig_equals_captum(tiny_model, method):
    steps = 20
    ours = salience(
        lit_sig.IntegratedGradients().run(
            [{"sentence": SENTENCE}],
            tiny_model,
            None,
            config={**RAW, "Class to explain": "1", "Integration method": method, "Interpolation steps": steps},
        )[0]
    )
    theirs = captum_ig(tiny_model, SENTENCE, 1, method, steps)
    if method == "riemann_trapezoid":
        theirs *= steps / (steps - 1)  # captum 0.9's trapezoid weights sum to (n-1)/n.
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())


def explain(interpreter, model, example, **config):
    return interpreter.run([example], model, None, config={**RAW, **config})[0]


def score(model, example) -> float:
    return model.predict([example])[0][protocol.TARGET_SCORE_FIELD]


def test_ig_completeness_on_minilm(minilm_model):
    example = {"sentence": SENTENCE, "label": "1"}
    out = minilm_model.predict([example])[0]
    mask = minilm_model.baseline_embedding("input_embs_sentence", "mask")
    at_baseline = score(
        minilm_model, dict(example, input_embs_sentence=np.tile(mask, (len(out["tokens_sentence"]), 1)))
    )
    gap = out[protocol.TARGET_SCORE_FIELD] - at_baseline
    errors = []
    for steps in (2, 8, 50):
        result = explain(lit_sig.IntegratedGradients(), minilm_model, example, **{"Interpolation steps": steps})
        error = gap - salience(result).sum()
        assert result["completeness_delta"] == pytest.approx(error, abs=1e-4)
        errors.append(abs(error))
    assert errors[0] > errors[2]
    assert errors[2] <= 1e-3 * abs(gap)


def test_sig_per_token_completeness_on_minilm(minilm_model):
    example = {"sentence": SENTENCE, "label": "1"}
    out = minilm_model.predict([example])[0]
    embs = out["input_embs_sentence"]
    mask = minilm_model.baseline_embedding("input_embs_sentence", "mask")
    gaps = []
    for i in range(len(embs)):
        moved = embs.copy()
        moved[i] = mask
        gaps.append(out[protocol.TARGET_SCORE_FIELD] - score(minilm_model, dict(example, input_embs_sentence=moved)))
    gaps = np.array(gaps)
    worst = []
    for steps in (2, 50):
        result = explain(
            lit_sig.SequentialIntegratedGradients(), minilm_model, example, **{"Interpolation steps": steps}
        )
        errors = np.abs(gaps - salience(result))
        assert result["completeness_delta"] == pytest.approx(errors.max(), abs=1e-4)
        worst.append(errors.max())
    assert worst[0] > worst[1]
    assert np.all(errors <= 1e-3 * np.abs(gaps).max())


@pytest.mark.parametrize("cls", [lit_sig.IntegratedGradients, lit_sig.SequentialIntegratedGradients])
def test_adaptive_steps_reach_the_tolerance(minilm_model, cls):
    example = {"sentence": SENTENCE, "label": "1"}
    fixed = explain(cls(), minilm_model, example)
    errors = []
    for tolerance in (1e-2, 1e-5):
        adaptive = explain(cls(), minilm_model, example, **{"Adaptive steps": True, "Tolerance": tolerance})
        errors.append(abs(adaptive["completeness_delta"]))
        assert errors[-1] <= tolerance + 2e-6  # Float rounding of the measured scores.
    np.testing.assert_allclose(salience(adaptive), salience(fixed), atol=2e-5)
    assert errors[0] > errors[1]


class IgnoresSecondWord(torch.nn.Module):
    """A bag-of-embeddings classifier that never looks at position 2 (the second word)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.config = pytypes.SimpleNamespace(num_labels=2, max_position_embeddings=64)
        self.embeddings = torch.nn.Embedding(30522, 8)
        self.head = torch.nn.Linear(8, 2)

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.embeddings

    def forward(self, inputs_embeds, attention_mask, token_type_ids=None, **unused):
        keep = attention_mask.to(inputs_embeds.dtype).clone()  # [B, T]
        keep[:, 2] = 0
        hidden = torch.tanh(inputs_embeds) * keep[..., None]  # [B, T, D]
        logits = self.head(torch.tanh(hidden.sum(1)))  # [B, 2]
        return pytypes.SimpleNamespace(logits=logits, hidden_states=(hidden,), attentions=None)


@pytest.mark.parametrize(
    "interpreter",
    [
        lit_sig.GradientNorm(),
        lit_sig.GradientDotInput(),
        lit_sig.IntegratedGradients(),
        lit_sig.SequentialIntegratedGradients(),
    ],
    ids=lambda i: type(i).__name__,
)
def test_ignored_token_gets_zero(tokenizer, interpreter):
    model = models.HFSequenceClassifier(IgnoresSecondWord(), tokenizer, device="cpu")
    result = interpreter.run([{"sentence": "truly awful acting"}], model, None)[0]
    scores = salience(result)
    assert scores[1] == 0.0
    assert np.all(scores[[0, 2]] != 0.0)


@pytest.mark.parametrize("cls", [lit_sig.IntegratedGradients, lit_sig.SequentialIntegratedGradients])
def test_results_do_not_depend_on_minibatch_size_or_batch_mates(tokenizer, cls):
    module = tiny_bert()
    one = models.HFSequenceClassifier(module, tokenizer, device="cpu", max_minibatch_size=1)
    many = models.HFSequenceClassifier(module, tokenizer, device="cpu", max_minibatch_size=64)
    config = {**RAW, "Interpolation steps": 10}
    alone = cls().run([{"sentence": "bad"}], one, None, config=config)[0]
    longer = "the acting , costumes , music , cinematography and sound are all astounding"
    together = cls().run([{"sentence": longer}, {"sentence": "bad"}, {"sentence": SENTENCE}], many, None, config=config)
    scale = abs(score(one, {"sentence": "bad"}))  # float32 sums in another order: ~1e-6 of F.
    np.testing.assert_allclose(salience(together[1]), salience(alone), rtol=1e-4, atol=1e-5 * scale)


def test_adaptive_steps_share_passes_and_each_input_meets_its_tolerance(tokenizer, monkeypatch):
    """Adaptive SIG on three inputs in one run: passes hold rows of several inputs, never more than the
    model's rows per pass, and each token's salience is within the tolerance of a direct occlusion."""
    module = tiny_bert()
    one = models.HFSequenceClassifier(module, tokenizer, device="cpu", max_rows_per_pass=1)
    many = models.HFSequenceClassifier(module, tokenizer, device="cpu", max_rows_per_pass=16)
    tolerance = 1e-4
    config = {**RAW, "Adaptive steps": True, "Tolerance": tolerance, "Class to explain": "1"}
    texts = ["the acting , costumes , music , cinematography and sound are all astounding", "bad", SENTENCE]
    passes = []
    real = many.score_rows
    monkeypatch.setattr(many, "score_rows", lambda pieces, g: passes.append(pieces) or real(pieces, g))
    together = lit_sig.SequentialIntegratedGradients().run([{"sentence": t} for t in texts], many, None, config=config)
    assert max(sum(len(rows) for _, rows in p) for p in passes) <= 16
    assert max(len({id(key) for key, _ in p}) for p in passes) > 1  # Inputs share passes.
    for text, result in zip(texts, together):
        assert result["tolerance_met"] and abs(result["completeness_delta"]) <= tolerance
        exact = occlusion(many, (text,), 1, "mask")
        np.testing.assert_allclose(salience(result), exact, atol=tolerance + 1e-5 * np.abs(exact).max())
    alone = lit_sig.SequentialIntegratedGradients().run([{"sentence": "bad"}], one, None, config=config)[0]
    np.testing.assert_allclose(salience(together[1]), salience(alone), atol=2 * tolerance)


TYPED_SPECIAL = "good [SEP] film"  # The tokenizer maps the typed "[SEP]" to its special id, inside the text.


def test_a_typed_token_that_looks_special_still_moves(tiny_model):
    """The wrapper's x holds the text's tokens only ([CLS]/[SEP] around it never enter), so all of them
    move, a typed "[SEP]" too: exact SIG equals direct occlusion of its id, and it is not zero."""
    config = {interpreters.METHOD_KEY: interpreters.EXACT_METHOD, "Class to explain": "1"}
    result = explain(lit_sig.SequentialIntegratedGradients(), tiny_model, {"sentence": TYPED_SPECIAL}, **config)
    assert list(result["token_grad_sentence"].tokens) == ["good", "[SEP]", "film"]
    exact = occlusion(tiny_model, (TYPED_SPECIAL,), 1, "mask")
    np.testing.assert_allclose(salience(result), exact, rtol=1e-5, atol=1e-6 * np.abs(exact).max())
    assert abs(exact[1]) > 1e-3


class MarksSpecial(PredictOnly):
    """A plain LIT model that says which of its tokens are special: here the second word."""

    def special_token_mask(self, tokens_field: str, tokens: list[str]) -> list[bool]:
        assert tokens_field == "tokens_sentence"
        return [i == 1 for i in range(len(tokens))]


@pytest.mark.parametrize("cls", [lit_sig.IntegratedGradients, lit_sig.SequentialIntegratedGradients])
def test_models_say_which_tokens_are_special_through_wrappers(tiny_model, cls):
    """`special_token_mask`, found through LIT's CachingModelWrapper: the marked token keeps its embedding
    (salience 0); without the method, tokens are judged by their text (a typed "[SEP]" stays)."""
    example = {"sentence": SENTENCE, "label": "1"}
    marked = explain(cls(), caching.CachingModelWrapper(MarksSpecial(tiny_model), "marked"), example)
    plain = explain(cls(), PredictOnly(tiny_model), example)
    assert salience(marked)[1] == 0.0 and np.all(salience(marked)[[0, 2, 3]] != 0.0)
    assert salience(plain)[1] != 0.0
    if cls is lit_sig.SequentialIntegratedGradients:  # Token i moves alone: the others' SIG is unchanged.
        np.testing.assert_allclose(salience(marked)[[0, 2, 3]], salience(plain)[[0, 2, 3]], rtol=1e-6, atol=1e-9)
    by_text = explain(cls(), PredictOnly(tiny_model), {"sentence": TYPED_SPECIAL, "label": "1"})
    assert salience(by_text)[1] == 0.0 and np.all(salience(by_text)[[0, 2]] != 0.0)


def test_two_segments_are_explained_together(tiny_pair_model):
    example = {"sentence1": "a man sleeps", "sentence2": "nobody sleeps"}
    ig = explain(lit_sig.IntegratedGradients(), tiny_pair_model, example)
    sig = explain(lit_sig.SequentialIntegratedGradients(), tiny_pair_model, example)
    for result in (ig, sig):
        assert list(result["token_grad_sentence1"].tokens) == ["a", "man", "sleeps"]
        assert list(result["token_grad_sentence2"].tokens) == ["nobody", "sleeps"]
    out = tiny_pair_model.predict([example])[0]
    mask = tiny_pair_model.baseline_embedding("input_embs_sentence1", "mask")
    both_masked = dict(
        example,
        label=out["label"],
        input_embs_sentence1=np.tile(mask, (3, 1)),
        input_embs_sentence2=np.tile(mask, (2, 1)),
    )
    gap = out[protocol.TARGET_SCORE_FIELD] - score(tiny_pair_model, both_masked)
    total = salience(ig, "token_grad_sentence1").sum() + salience(ig, "token_grad_sentence2").sum()
    assert ig["completeness_delta"] == pytest.approx(gap - total, abs=1e-4)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lit_sig.GradientNorm(), gradient_maps.GradientNorm()),
        (lit_sig.GradientDotInput(), gradient_maps.GradientDotInput()),
    ],
    ids=["grad_norm", "grad_dot_input"],
)
def test_simple_gradients_agree_with_lit(tiny_model, ours, theirs):
    inputs = [{"sentence": SENTENCE}, {"sentence": "bleak"}]
    outputs = tiny_model.predict(inputs)
    for a, b in zip(ours.run(inputs, tiny_model, None, outputs), theirs.run(inputs, tiny_model, None, outputs)):
        np.testing.assert_allclose(salience(a), salience(b), atol=1e-6)
        assert list(a["token_grad_sentence"].tokens) == list(b["token_grad_sentence"].tokens)


def test_notebook_use_with_defaults(tiny_model):
    result = lit_sig.SequentialIntegratedGradients().run([{"sentence": SENTENCE}], tiny_model, None)[0]
    scores = salience(result)
    assert np.isclose(np.abs(scores).sum(), 1.0)  # Normalized by default.
    assert np.isfinite(result["completeness_delta"])


def test_specs_for_the_ui():
    spec = lit_sig.SequentialIntegratedGradients().config_spec()
    assert spec[interpreters.INTERPOLATION_KEY].default == 50
    assert spec[interpreters.METHOD_KEY].default == "gausslegendre"
    assert spec[interpreters.BASELINE_KEY].vocab == ["mask", "pad", "zero", "eos", "bos", "unk"]
    assert not lit_sig.SequentialIntegratedGradients().meta_spec()["saliency"].autorun
    assert spec[interpreters.METHOD_KEY].vocab == [*quadrature.METHODS, "exact"]
    assert lit_sig.IntegratedGradients().config_spec()[interpreters.METHOD_KEY].vocab == list(quadrature.METHODS)


def test_constructor_defaults_reach_the_spec_and_the_parser():
    sig = lit_sig.SequentialIntegratedGradients(steps=20, baseline="pad", adaptive=True, tolerance=1e-3)
    spec = sig.config_spec()
    assert (spec[interpreters.INTERPOLATION_KEY].default, spec[interpreters.BASELINE_KEY].default) == (20, "pad")
    assert spec[interpreters.ADAPTIVE_KEY].default is True and spec[interpreters.TOLERANCE_KEY].default == 1e-3
    settings = sig.parse_config({interpreters.INTERPOLATION_KEY: 7})
    assert (settings.steps, settings.baseline, settings.adaptive, settings.tolerance) == (7, "pad", True, 1e-3)
    with pytest.raises(ValueError, match=r"integer in \[1, 500\]"):
        lit_sig.IntegratedGradients(steps=0)  # Bad defaults fail at construction, not at the first run.
    with pytest.raises(TypeError, match="Unknown setting"):
        lit_sig.IntegratedGradients(interpolation_steps=20)
    assert lit_sig.GradientNorm(normalize=False).config_spec()[interpreters.NORMALIZATION_KEY].default is False


def test_a_config_key_is_one_settings_field():
    """What a new key (say, an attention head) needs: one field; the parser, the spec and the key check follow."""

    @dataclasses.dataclass(frozen=True)
    class WithHead(config.PathSettings):
        head: int = config.setting(config.Param("Head", 0, 0, 11))

    schema = config.Schema(WithHead, {"head": 2}, {})
    assert schema.parse({}).head == 2 and schema.parse({"Head": "5", "Normalize": False}).head == 5
    assert schema.spec()["Head"].default == 2 and schema.spec()["Head"].max_val == 11
    assert set(schema.spec()) == set(lit_sig.SequentialIntegratedGradients().config_spec()) | {"Head"}
    with pytest.raises(ValueError, match=r"'Head' must be an integer in \[0, 11\]"):
        schema.parse({"Head": 12})
    with pytest.raises(ValueError, match="accepted: .*'Head'"):
        schema.parse({"Heads": 1})


@pytest.mark.parametrize(
    "config,message",
    [
        ({"Interpolation steps": 0}, r"integer in \[1, 500\]"),
        ({"Interpolation steps": -1}, r"integer in \[1, 500\]"),
        ({"Interpolation steps": 10**7}, r"integer in \[1, 500\]"),
        ({"Interpolation steps": "abc"}, r"integer in \[1, 500\]"),
        ({"Interpolation steps": 2.5}, r"integer in \[1, 500\]"),
        ({"Interpolation steps": None}, r"integer in \[1, 500\]"),
        ({"Integration method": "simpson"}, "accepted: gausslegendre, riemann_left"),
        ({"Integration method": "riemann_trapezoid", "Interpolation steps": 1}, r"\[2, 500\]"),
        ({"Baseline": "cls"}, "accepted: mask, pad, zero, eos, bos, unk"),
        ({"Class to explain": "7"}, r"accepted: \['0', '1'\]"),
        ({"Class to explain": 1}, "class name string"),
        ({"Normalize": "yes"}, "true or false"),
        ({"Adaptive steps": "on"}, "true or false"),
        ({"Tolerance": 0}, r"number in \[1e-07, 1\]"),
        ({"Tolerance": -1}, r"number in \[1e-07, 1\]"),
        ({"Tolerance": "abc"}, r"number in \[1e-07, 1\]"),
        ({"Tolerance": float("nan")}, r"number in \[1e-07, 1\]"),
        ({"Steps": 10}, "Unknown config key"),
    ],
)
@pytest.mark.parametrize("cls", [lit_sig.IntegratedGradients, lit_sig.SequentialIntegratedGradients])
def test_bad_config_raises(tiny_model, cls, config, message):
    with pytest.raises(ValueError, match=message):
        cls().run([{"sentence": "good"}], tiny_model, None, config=config)


def test_steps_accept_numeric_strings_and_floats(tiny_model):
    interpreter = lit_sig.IntegratedGradients()
    assert interpreter.parse_config({"Interpolation steps": "12"}).steps == 12
    assert interpreter.parse_config({"Interpolation steps": 12.0}).steps == 12


def test_incompatible_model_raises(tiny_model):
    class NoGradients(models.HFSequenceClassifier):
        def output_spec(self):
            return {"probas": super().output_spec()["probas"]}

    model = NoGradients(tiny_model.model, tiny_model.tokenizer, device="cpu")
    with pytest.raises(ValueError, match="TokenGradients"):
        lit_sig.SequentialIntegratedGradients().run([{"sentence": "good"}], model, None)
