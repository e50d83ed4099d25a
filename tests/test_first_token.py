"""The trimmed last layer (first token only): the model's own logits and gradients, less work,
and the full model wherever the view would not be the same model."""

import numpy as np
import pytest
import torch
import transformers

import lit_sig
from lit_sig import models
from lit_sig.lit import interpreters
from lit_sig.models import first_token, sst2_model
from tests.helpers import RAW, SENTENCE, salience, tiny_bert, untrimmed


def _batch(model: torch.nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings `[3, 9, H]`, a mask with two padded rows, token types of a sentence pair."""
    torch.manual_seed(1)
    embs = torch.randn(3, 9, model.config.hidden_size, dtype=dtype, requires_grad=True)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 8:] = 0
    types = torch.zeros(3, 9, dtype=torch.long)
    types[:, 4:] = 1
    return embs, mask, types


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_view_gives_the_model_logits_and_gradients_exactly_in_float64(attn):
    """In float64 the only difference would be the model's: none, to 1e-12."""
    model = tiny_bert(num_labels=3).double()
    model.set_attn_implementation(attn)
    view = first_token.first_token_view(model)
    assert view is not None
    embs, mask, types = _batch(model, torch.float64)
    for attention_mask in (mask, None):
        full = model(inputs_embeds=embs, attention_mask=attention_mask, token_type_ids=types).logits
        trimmed = view(inputs_embeds=embs, attention_mask=attention_mask, token_type_ids=types).logits
        torch.testing.assert_close(trimmed, full, rtol=1e-12, atol=1e-12)
        weights = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
        (grad_full,) = torch.autograd.grad((full * weights).sum(), embs)
        (grad_trimmed,) = torch.autograd.grad((trimmed * weights).sum(), embs)
        torch.testing.assert_close(grad_trimmed, grad_full, rtol=1e-12, atol=1e-12)
        assert grad_full.abs().max() > 1e-3


def test_view_runs_the_last_layer_for_the_first_token_only():
    model = tiny_bert()
    view = first_token.first_token_view(model)
    shapes = []
    last = model.bert.encoder.layer[-1]
    handles = [
        module.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
        for module in (model.bert.encoder.layer[0].intermediate, last.intermediate)
    ]
    try:
        view(inputs_embeds=torch.randn(4, 11, 32))
    finally:
        for handle in handles:
            handle.remove()
    assert shapes == [(4, 11, 32), (4, 1, 32)]  # The layer below still runs every position.
    assert model.bert.encoder.layer[-1] is last  # The model itself is not changed.
    assert all(p is q for p, q in zip(view.parameters(), model.parameters()))  # Nothing copied.


class MeanPooled(torch.nn.Module):
    """A BERT encoder whose head averages every position: the first token is not enough."""

    base_model_prefix = "bert"

    def __init__(self) -> None:
        super().__init__()
        self.bert = tiny_bert().bert
        self.config = self.bert.config
        self.head = torch.nn.Linear(32, 2)

    @property
    def base_model(self) -> torch.nn.Module:
        return self.bert

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.bert.get_input_embeddings()

    def forward(self, inputs_embeds, attention_mask=None, token_type_ids=None, **kwargs):
        del kwargs
        hidden = self.bert(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
        return transformers.modeling_outputs.SequenceClassifierOutput(logits=self.head(hidden.mean(1)))


def small_config(config_class: type, **kwargs) -> transformers.PretrainedConfig:
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return config_class(vocab_size=100, max_position_embeddings=64, num_labels=2, **shape, **kwargs)


def test_no_view_where_the_head_reads_every_position_or_weights_are_half():
    assert first_token.first_token_view(MeanPooled()) is None
    assert first_token.first_token_view(tiny_bert().to(torch.bfloat16)) is None
    assert first_token.first_token_view(torch.nn.Linear(3, 3)) is None


def test_no_view_of_a_layer_with_another_layout_even_when_logits_are_tiny():
    """MegatronBERT normalises before attention: same module names, another layer. With the default
    initialisation its logits are ~0.02, too small to tell; the layer's own output is compared too."""
    torch.manual_seed(0)
    model = transformers.MegatronBertForSequenceClassification(small_config(transformers.MegatronBertConfig)).eval()
    assert first_token.first_token_view(model) is None


def test_no_view_where_an_instance_forward_was_replaced():
    """Device-map dispatch and `module.compile()` replace forward on the instance; a copy would call it."""
    dispatched = tiny_bert()
    dispatched.bert.encoder.forward = dispatched.bert.encoder.forward  # As Accelerate's hooks do.
    assert first_token.first_token_view(dispatched) is None
    compiled = tiny_bert()
    compiled.compile()
    assert first_token.first_token_view(compiled) is None


@pytest.mark.parametrize(
    "model_class, config_class",
    [
        (transformers.RobertaForSequenceClassification, transformers.RobertaConfig),
        (transformers.ElectraForSequenceClassification, transformers.ElectraConfig),
    ],
)
def test_view_of_other_bert_style_classifiers(model_class, config_class):
    torch.manual_seed(0)
    model = model_class(small_config(config_class, pad_token_id=1)).eval()
    view = first_token.first_token_view(model)
    assert view is not None
    embs = torch.randn(2, 10, model.get_input_embeddings().embedding_dim)  # ELECTRA's: 128, projected to 32.
    with torch.no_grad():
        torch.testing.assert_close(view(inputs_embeds=embs).logits, model(inputs_embeds=embs).logits)


def test_view_of_unmerged_lora_linears():
    """LoRA wrappers (no `in_features`) around the linears, as during training of the embedded model."""
    model = tiny_bert()
    sst2_model.add_lora(model)
    for name, param in model.named_parameters():
        if "lora" in name.lower():
            torch.nn.init.normal_(param, std=0.1)  # Non-zero updates: the wrapper's path counts.
    view = first_token.first_token_view(model.eval())
    assert view is not None
    embs = torch.randn(2, 10, 32)
    with torch.no_grad():
        torch.testing.assert_close(view(inputs_embeds=embs).logits, model(inputs_embeds=embs).logits)


def test_wrapper_trims_the_embedded_and_minilm_models_unless_told_not_to(sst2, minilm_model, tokenizer):
    assert sst2.trimmed and minilm_model.trimmed  # The embedded model (LoRA merged) and the real encoder.
    assert not models.HFSequenceClassifier(tiny_bert(), tokenizer, trim_last_layer=False).trimmed
    assert models.HFSequenceClassifier(tiny_bert(), tokenizer, output_attention=True).trimmed  # Eager attention.


def test_trimmed_minilm_attributions_equal_the_full_model(minilm_model):
    """The real 6-layer encoder: IG, SIG and exact SIG through the trimmed view = through the full model."""
    full = untrimmed(minilm_model)
    examples = [{"sentence": SENTENCE}, {"sentence": "not bad"}]  # Padded passes too.
    cases = [
        (lit_sig.IntegratedGradients(), {interpreters.INTERPOLATION_KEY: 5}),
        (lit_sig.SequentialIntegratedGradients(), {interpreters.INTERPOLATION_KEY: 5}),
        (lit_sig.SequentialIntegratedGradients(), {interpreters.METHOD_KEY: interpreters.EXACT_METHOD}),
    ]
    for interpreter, config in cases:
        ours, theirs = (interpreter.run(examples, m, None, config={**RAW, **config}) for m in (minilm_model, full))
        for a, b in zip(ours, theirs):
            scale = np.abs(salience(b)).max()
            np.testing.assert_allclose(salience(a), salience(b), rtol=1e-5, atol=1e-5 * scale)


def test_hidden_states_still_come_from_the_full_model(tiny_model):
    """`predict` reads every position of the last layer (pooled embedding): the full model runs."""
    output = list(tiny_model.predict([{"sentence": SENTENCE}]))[0]
    encoding = tiny_model.tokenizer(SENTENCE, return_tensors="pt")
    with torch.no_grad():
        hidden = tiny_model.model(**encoding, output_hidden_states=True).hidden_states[-1][0]  # [L, H]
    np.testing.assert_allclose(output[models.POOLED_FIELD], hidden.mean(0).numpy(), rtol=1e-5, atol=1e-6)
