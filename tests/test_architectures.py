"""The model layer on a zoo of Hugging Face architectures, with inputs of different lengths in one call.

Each architecture is a tiny random config with the MiniLM vocabulary. For every one of them,
three sentences of different lengths share each call, and: `predict` equals a direct unpadded
Hugging Face call on token ids per sentence; exact SIG equals occlusion by direct calls; IG
equals captum on `inputs_embeds`; the first-token view is used only where it is exact. Decoder
heads read the last token, so their passes are left-padded (checked at load, `padding`).
"""

import numpy as np
import pytest
import torch
import transformers

import lit_sig
from lit_sig import models
from lit_sig.lit import interpreters
from lit_sig.models import padding
from tests.helpers import ARCHITECTURES, COMMON, DECODERS, build, captum_ig, occlusion, run, salience

SENTENCES = [
    "the acting , costumes , music and sound are all astounding here .",  # 13 word pieces
    "not bad",
    "a charming and often affecting journey of a film",
]
LABELS = ["a", "b"]
TRIMMED = {"bert", "roberta", "xlm-roberta", "electra"}  # BERT-layout layers read through [CLS].


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def zoo(request, tokenizer) -> tuple[str, models.HFSequenceClassifier]:
    return request.param, models.HFSequenceClassifier(build(request.param), tokenizer, labels=LABELS, device="cpu")


def direct_probas(model: models.HFSequenceClassifier, sentence: str) -> np.ndarray:
    """The module called as Hugging Face documents it, `model(**tokenizer(text))`: no padding, no wrapper."""
    with torch.no_grad():
        return torch.softmax(model.model(**model.tokenizer(sentence, return_tensors="pt")).logits[0], -1).numpy()


def test_sentences_have_different_lengths(tokenizer):
    lengths = [len(tokenizer(s)["input_ids"]) for s in SENTENCES]
    assert len(set(lengths)) == 3, lengths


def test_padding_is_chosen_from_what_the_head_reads(zoo):
    name, model = zoo
    expected = padding.LEFT if name in DECODERS else padding.RIGHT
    assert model.padding == expected


def test_predict_equals_a_direct_unpadded_call(zoo):
    _, model = zoo
    outputs = model.predict([{"sentence": s} for s in SENTENCES])
    for sentence, output in zip(SENTENCES, outputs):
        np.testing.assert_allclose(output["probas"], direct_probas(model, sentence), rtol=0, atol=2e-6)
    for sentence, output in zip(SENTENCES, model.classify([{"sentence": s} for s in SENTENCES])):
        np.testing.assert_allclose(output["probas"], direct_probas(model, sentence), rtol=0, atol=2e-6)


def test_exact_sig_equals_occlusion_by_direct_calls(zoo):
    _, model = zoo
    examples = [{"sentence": s} for s in SENTENCES]
    config = {interpreters.CLASS_KEY: "b", interpreters.METHOD_KEY: interpreters.EXACT_METHOD}
    results = run(lit_sig.SequentialIntegratedGradients(), model, examples, **config)
    for sentence, result in zip(SENTENCES, results):
        expected = occlusion(model, (sentence,), 1, "mask")
        np.testing.assert_allclose(salience(result), expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_ig_equals_captum_on_inputs_embeds(zoo):
    _, model = zoo
    examples = [{"sentence": s} for s in SENTENCES]
    config = {interpreters.CLASS_KEY: "b", interpreters.INTERPOLATION_KEY: 16}
    results = run(lit_sig.IntegratedGradients(), model, examples, **config)
    for sentence, result in zip(SENTENCES, results):
        expected = captum_ig(model, sentence, 1, "gausslegendre", 16)
        np.testing.assert_allclose(salience(result), expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_the_first_token_view_is_used_only_where_it_is_exact(zoo):
    name, model = zoo
    assert model.trimmed == (name in TRIMMED)
    if model.trimmed:  # The view's logits on a padded batch are the model's own.
        batch, _ = model._embed([{"sentence": s} for s in SENTENCES], [model._encoder.encode((s,)) for s in SENTENCES])
        with torch.no_grad():
            full = model.model(**batch.model_kwargs()).logits
            view = model.runner.view(**batch.model_kwargs()).logits
        torch.testing.assert_close(view, full, rtol=0, atol=1e-5 * float(full.abs().max()))


def test_a_model_that_cannot_take_inputs_embeds_is_refused_at_load(tokenizer):
    """BART's classifier finds its EOS tokens in input_ids: it cannot run on embeddings."""
    config = transformers.BartConfig(
        **{**COMMON, "pad_token_id": 1},
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
    )
    bart = transformers.BartForSequenceClassification(config).eval()
    with pytest.raises(ValueError, match="BartForSequenceClassification cannot be called with inputs_embeds"):
        models.HFSequenceClassifier(bart, tokenizer, labels=LABELS, device="cpu")


def test_heads_that_no_padding_fixes_run_one_length_per_pass(tokenizer, monkeypatch):
    """Where neither right nor left padding reproduces the unpadded logits, passes never mix lengths."""
    monkeypatch.setattr(padding, "_padded_logits", lambda *args: None)
    model = models.HFSequenceClassifier(build("gpt2"), tokenizer, labels=LABELS, device="cpu")
    assert model.padding == padding.UNMIXED
    lengths = []
    real = model._score_pass
    monkeypatch.setattr(
        model, "_score_pass", lambda pieces, g: lengths.append({len(p.full) for p, _ in pieces}) or real(pieces, g)
    )
    examples = [{"sentence": s} for s in SENTENCES]
    config = {interpreters.CLASS_KEY: "b", interpreters.INTERPOLATION_KEY: 4}
    results = run(lit_sig.IntegratedGradients(), model, examples, **config)
    assert lengths and all(len(group) == 1 for group in lengths)
    for sentence, result, output in zip(SENTENCES, results, model.predict(examples)):
        np.testing.assert_allclose(output["probas"], direct_probas(model, sentence), rtol=0, atol=2e-6)
        expected = captum_ig(model, sentence, 1, "gausslegendre", 4)
        np.testing.assert_allclose(salience(result), expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))
