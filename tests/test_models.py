"""The model wrapper's spec contract and numerics."""

import concurrent.futures

import numpy as np
import pytest
import torch
from lit_nlp.api import types as lit_types

from lit_sig import models
from lit_sig.lit import protocol
from tests.helpers import tiny_bert

SENTENCES = [
    "it 's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "the acting , costumes , music , cinematography and sound are all astounding given the production 's"
    " austere locales .",
    "bad",
]


def test_specs_declare_what_interpreters_need(tiny_model):
    inputs, outputs = tiny_model.input_spec(), tiny_model.output_spec()
    assert isinstance(inputs["input_embs_sentence"], lit_types.TokenEmbeddings)
    grad = outputs["token_grad_sentence"]
    assert isinstance(grad, lit_types.TokenGradients)
    assert grad.align == "tokens_sentence" and grad.grad_for == "input_embs_sentence"
    assert grad.grad_target_field_key == "label" == outputs["probas"].parent
    assert isinstance(inputs["label"], lit_types.CategoryLabel)
    assert isinstance(outputs[protocol.TARGET_SCORE_FIELD], lit_types.Scalar)
    assert isinstance(outputs[models.POOLED_FIELD], lit_types.Embeddings)
    assert not any(isinstance(s, lit_types.AttentionHeads) for s in outputs.values())


def test_outputs_are_trimmed_float32_word_tokens(tiny_model, tokenizer):
    outs = tiny_model.predict([{"sentence": s} for s in SENTENCES])
    for sentence, out in zip(SENTENCES, outs):
        expected = tokenizer.tokenize(sentence)
        assert out["tokens_sentence"] == expected  # No [CLS] / [SEP].
        assert out["input_embs_sentence"].shape == (len(expected), 32)
        assert out["token_grad_sentence"].dtype == np.float32
        assert out["token_grad_sentence"].shape == (len(expected), 32)
        assert np.isclose(out["probas"].sum(), 1.0, atol=1e-6)
        assert out["label"] == str(int(np.argmax(out["probas"])))


def test_feeding_back_embeddings_reproduces_prediction(tiny_model):
    outs = tiny_model.predict([{"sentence": s} for s in SENTENCES])
    again = tiny_model.predict(
        [{"sentence": s, "input_embs_sentence": o["input_embs_sentence"]} for s, o in zip(SENTENCES, outs)]
    )
    for a, b in zip(outs, again):
        np.testing.assert_allclose(a["probas"], b["probas"], atol=1e-5)
        np.testing.assert_allclose(a["token_grad_sentence"], b["token_grad_sentence"], atol=1e-5)


def test_gradient_is_of_the_target_logit(tiny_model):
    ex = {"sentence": SENTENCES[1], "label": "1"}
    out = tiny_model.predict([ex])[0]
    embs, grads = out["input_embs_sentence"], out["token_grad_sentence"]
    direction = np.random.default_rng(0).normal(size=embs.shape).astype(np.float32)
    eps = 1e-2
    plus = tiny_model.predict([dict(ex, input_embs_sentence=embs + eps * direction)])[0]
    minus = tiny_model.predict([dict(ex, input_embs_sentence=embs - eps * direction)])[0]
    finite_difference = (plus[protocol.TARGET_SCORE_FIELD] - minus[protocol.TARGET_SCORE_FIELD]) / (2 * eps)
    assert np.isclose(finite_difference, np.sum(grads * direction), rtol=2e-2)
    ids = torch.tensor([tiny_model.tokenizer(ex["sentence"])["input_ids"]])
    with torch.no_grad():
        logits = tiny_model.model(input_ids=ids).logits[0]
    assert out[protocol.TARGET_SCORE_FIELD] == pytest.approx(float(logits[1]), abs=1e-5)


def test_probability_target_option(tokenizer):
    model = models.HFSequenceClassifier(tiny_bert(), tokenizer, device="cpu", grad_wrt="probability")
    out = model.predict([{"sentence": SENTENCES[0], "label": "1"}])[0]
    assert np.isclose(out[protocol.TARGET_SCORE_FIELD], out["probas"][1], atol=1e-6)


def test_padding_and_minibatch_size_do_not_change_results(tokenizer):
    module = tiny_bert()
    one = models.HFSequenceClassifier(module, tokenizer, device="cpu", max_minibatch_size=1)
    many = models.HFSequenceClassifier(module, tokenizer, device="cpu", max_minibatch_size=64)
    alone = one.predict([{"sentence": SENTENCES[3]}])[0]
    batched = many.predict([{"sentence": s} for s in SENTENCES])[3]  # Padded to the longest.
    np.testing.assert_allclose(alone["probas"], batched["probas"], atol=1e-5)
    np.testing.assert_allclose(alone["token_grad_sentence"], batched["token_grad_sentence"], atol=1e-5)
    np.testing.assert_allclose(alone[models.POOLED_FIELD], batched[models.POOLED_FIELD], atol=1e-5)


def test_outputs_keep_input_order(tiny_model):
    outs = tiny_model.predict([{"sentence": s} for s in SENTENCES])
    assert [len(o["tokens_sentence"]) for o in outs] == [
        len(tiny_model.predict([{"sentence": s}])[0]["tokens_sentence"]) for s in SENTENCES
    ]


def test_special_tokens_keep_their_embeddings(tiny_model):
    """Passed-in embeddings cover word tokens only; [CLS]/[SEP] are the model's own."""
    out = tiny_model.predict([{"sentence": "good"}])[0]
    zeros = np.zeros_like(out["input_embs_sentence"])
    at_zero = tiny_model.predict([{"sentence": "good", "input_embs_sentence": zeros}])[0]
    np.testing.assert_array_equal(at_zero["input_embs_sentence"], zeros)
    assert not np.allclose(at_zero["probas"], out["probas"], atol=1e-6)


def test_two_segments(tiny_pair_model, tokenizer):
    out = tiny_pair_model.predict([{"sentence1": "a man sleeps", "sentence2": "nobody sleeps"}])[0]
    assert out["tokens_sentence1"] == tokenizer.tokenize("a man sleeps")
    assert out["tokens_sentence2"] == tokenizer.tokenize("nobody sleeps")
    assert out["probas"].shape == (3,)
    replaced = tiny_pair_model.predict(
        [
            {
                "sentence1": "a man sleeps",
                "sentence2": "nobody sleeps",
                "input_embs_sentence2": np.zeros_like(out["input_embs_sentence2"]),
            }
        ]
    )[0]
    np.testing.assert_array_equal(replaced["input_embs_sentence1"], out["input_embs_sentence1"])
    assert not np.allclose(replaced["probas"], out["probas"], atol=1e-6)


def test_regression(tokenizer):
    model = models.HFSequenceClassifier(tiny_bert(num_labels=1), tokenizer, labels=None, device="cpu")
    assert isinstance(model.output_spec()["score"], lit_types.RegressionScore)
    assert model.output_spec()["token_grad_sentence"].grad_target_field_key is None
    out = model.predict([{"sentence": "fine"}])[0]
    assert out["score"] == pytest.approx(out[protocol.TARGET_SCORE_FIELD])


def test_baseline_embeddings(tiny_model, tokenizer):
    mask = tiny_model.baseline_embedding("input_embs_sentence", "mask")
    table = tiny_model.model.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(mask, table[tokenizer.mask_token_id])
    np.testing.assert_array_equal(
        tiny_model.baseline_embedding("input_embs_sentence", "pad"), table[tokenizer.pad_token_id]
    )
    np.testing.assert_array_equal(
        tiny_model.baseline_embedding("input_embs_sentence", "unk"), table[tokenizer.unk_token_id]
    )
    assert tiny_model.baseline_embedding("input_embs_sentence", "eos") is None  # BERT has none.
    with pytest.raises(ValueError, match="accepted"):
        tiny_model.baseline_embedding("input_embs_sentence", "cls")


def test_attention_output_is_optional(tokenizer):
    model = models.HFSequenceClassifier(tiny_bert(), tokenizer, device="cpu", output_attention=True)
    out = model.predict([{"sentence": "good fun"}])[0]
    assert out["tokens"] == ["[CLS]", "good", "fun", "[SEP]"]
    assert out["layer_1/attention"].shape == (2, 4, 4)


def test_concurrent_predictions_match_sequential(tiny_model):
    examples = [{"sentence": s} for s in SENTENCES * 4]
    expected = [tiny_model.predict([ex])[0]["token_grad_sentence"] for ex in examples]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda ex: tiny_model.predict([ex])[0], examples))
    for want, got in zip(expected, results):
        np.testing.assert_array_equal(got["token_grad_sentence"], want)


def test_truncates_long_inputs_and_says_so(tokenizer):
    model = models.HFSequenceClassifier(tiny_bert(), tokenizer, device="cpu", max_length=10)
    out = model.predict([{"sentence": "word " * 50}, {"sentence": "short"}])
    assert out[0]["truncated"] and len(out[0]["tokens_sentence"]) == 8
    assert not out[1]["truncated"]


def test_out_of_memory_retries_with_smaller_minibatches(tokenizer, monkeypatch):
    model = models.HFSequenceClassifier(tiny_bert(), tokenizer, device="cpu", max_minibatch_size=8)
    real = model._forward_backward
    sizes = []

    def flaky(inputs, encodings):
        sizes.append(len(inputs))
        if len(inputs) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(inputs, encodings)

    monkeypatch.setattr(model, "_forward_backward", flaky)
    examples = [{"sentence": s} for s in SENTENCES * 2]
    outs = model.predict(examples)
    assert sizes[0] == 8 and max(sizes[1:]) <= 4 and len(outs) == 8
    np.testing.assert_allclose(outs[1]["probas"], tiny_model_probas(tokenizer, model.model, SENTENCES[1]), atol=1e-5)

    monkeypatch.setattr(model, "_forward_backward", lambda i, e: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(RuntimeError, match="Out of memory on a single input"):
        model.predict([{"sentence": "good"}])


def tiny_model_probas(tokenizer, module, sentence):
    return models.HFSequenceClassifier(module, tokenizer, device="cpu").predict([{"sentence": sentence}])[0]["probas"]


@pytest.mark.parametrize(
    "example,message",
    [
        ({}, "missing the text field 'sentence'"),
        ({"sentence": ""}, "empty"),
        ({"sentence": "   "}, "empty"),
        ({"sentence": 3}, "must be a string"),
        ({"sentence": "good", "label": "7"}, r"Unknown class '7' to explain; accepted: \['0', '1'\]"),
        ({"sentence": "good", "input_embs_sentence": np.zeros((3, 32))}, r"expected \(1, 32\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_model, example, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.predict([example])


def test_bad_constructor_arguments(tokenizer):
    with pytest.raises(ValueError, match="accepted"):
        models.HFSequenceClassifier(tiny_bert(), tokenizer, grad_wrt="loss")
    with pytest.raises(ValueError, match="2 outputs"):
        models.HFSequenceClassifier(tiny_bert(), tokenizer, labels=["a", "b", "c"])


def test_from_pretrained_loads_a_local_checkpoint_and_checks_labels(tmp_path, tokenizer):
    tiny_bert(num_labels=3).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = models.HFSequenceClassifier.from_pretrained(str(tmp_path), labels=["a", "b", "c"], device="cpu")
    assert model.predict([{"sentence": "fine"}])[0]["probas"].shape == (3,)
    with pytest.raises(ValueError, match="3-class head but labels=.* names 2"):
        models.HFSequenceClassifier.from_pretrained(str(tmp_path), labels=["0", "1"], device="cpu")


def test_minibatches_are_bounded_by_padded_tokens(tokenizer, monkeypatch):
    model = models.HFSequenceClassifier(
        tiny_bert(), tokenizer, device="cpu", max_minibatch_size=8, max_minibatch_tokens=24
    )
    real = model._forward_backward
    shapes = []

    def recording(inputs, encodings):
        shapes.append((len(inputs), max(len(e.input_ids) for e in encodings)))
        return real(inputs, encodings)

    monkeypatch.setattr(model, "_forward_backward", recording)
    short, long = "good", "a rather long sentence that has many more word pieces"
    outs = model.predict([{"sentence": long}, {"sentence": short}] * 4)
    assert all(n * length <= 24 or n == 1 for n, length in shapes)
    assert sum(n for n, _ in shapes) == 8 and shapes[0] == (4, 3)  # The four short ones together.
    np.testing.assert_allclose(outs[0]["probas"], tiny_model_probas(tokenizer, model.model, long), atol=1e-5)


def test_reduced_precision_runs_and_bad_precision_is_rejected(tokenizer):
    module = tiny_bert()
    full = models.HFSequenceClassifier(module, tokenizer, device="cpu")
    half = models.HFSequenceClassifier(module, tokenizer, device="cpu", precision="bfloat16")
    example = {"sentence": "a fine film"}
    a, b = full.predict([example])[0], half.predict([example])[0]
    assert b["token_grad_sentence"].dtype == np.float32
    np.testing.assert_allclose(b["probas"], a["probas"], atol=0.05)
    assert not np.array_equal(b["probas"], a["probas"])  # It did run in bfloat16.
    with pytest.raises(ValueError, match="accepted: \\['float32', 'bfloat16', 'float16'\\]"):
        models.HFSequenceClassifier(module, tokenizer, device="cpu", precision="int8")


@pytest.mark.parametrize("model_name", ["tiny_model", "tiny_pair_model", "regression_model"])
def test_classify_equals_predict_without_a_backward_pass(request, model_name):
    """The forward-only `classify` gives `predict`'s labels, probabilities (or scores) and truncation."""
    model = request.getfixturevalue(model_name)
    if model.text_fields == ["sentence"]:
        examples = [{"sentence": "a charming journey"}, {"sentence": "bad " * 600}, {"sentence": "not bad"}]
    else:
        examples = [{"sentence1": "a man plays", "sentence2": "nobody plays"}, {"sentence1": "yes", "sentence2": "no"}]
    grad_enabled = []
    handle = model.model.register_forward_pre_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    try:
        classified = model.classify(examples)
    finally:
        handle.remove()
    assert grad_enabled and not any(grad_enabled)
    assert [c["truncated"] for c in classified] == [len(e.get("sentence", "")) > 1000 for e in examples]
    for ours, full in zip(classified, model.predict(examples)):
        assert ours["truncated"] == full["truncated"]
        if model.labels is None:
            assert ours["score"] == pytest.approx(full["score"], rel=1e-5, abs=1e-6)
        else:
            assert ours["label"] == full["label"]
            np.testing.assert_allclose(ours["probas"], full["probas"], rtol=1e-5, atol=1e-7)


def test_classify_runs_at_the_models_precision(tokenizer):
    """Under bfloat16 `classify` predicts as `predict` does (both under autocast), not in float32.

    Which last bits bfloat16 gives depends on the CPU's kernels, so the test checks that the
    model's layers compute in bfloat16 during `classify` and that its probabilities stay within
    bfloat16's precision (8 significant bits; 2^-4 allows 16 roundings) of float32's.
    """
    examples = [{"sentence": s} for s in ("a charming journey", "not bad", "the plot never quite works")]
    module = tiny_bert()
    bf16 = models.HFSequenceClassifier(module, tokenizer, device="cpu", precision="bfloat16")
    fp32 = models.HFSequenceClassifier(tiny_bert(), tokenizer, device="cpu")
    dtypes = []
    handle = module.classifier.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    try:
        ours = bf16.classify(examples)
    finally:
        handle.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    exact = fp32.classify(examples)
    np.testing.assert_allclose([o["probas"] for o in ours], [e["probas"] for e in exact], rtol=0, atol=2**-4)
