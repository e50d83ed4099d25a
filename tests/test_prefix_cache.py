"""Exact SIG's rows through the prompt's KV cache (`lit_sig.models.prefix_cache`), against direct Hugging Face calls.

The reference is occlusion by the full model's own logits, one whole row per token; the cached rows must
equal it and the plain rows to 1e-5 of the scale (the larger of |F| and the largest salience: each salience is
a difference of two float32 values of F), and the plain rows must run where the cache can't be trusted.
"""

import numpy as np
import pytest
import torch
import transformers

import lit_sig
from lit_sig.lit import interpreters
from lit_sig.models import causal_lm, prefix_cache
from tests import helpers

EXACT = {
    interpreters.NORMALIZATION_KEY: False,
    interpreters.BASELINE_KEY: "zero",
    interpreters.METHOD_KEY: interpreters.EXACT_METHOD,
}
EXAMPLES = [
    {"prompt": "The capital of France is", "target": " Paris, a city."},
    {"prompt": "Is this review positive or negative? The movie was wonderful and long.", "target": " Great"},
    {"prompt": "Two plus two", "target": " is four."},
]


def build(family: str, **kwargs) -> causal_lm.HFCausalLM:
    tokenizer = helpers.tiny_lm_tokenizer(bos=family == "llama", chat=False)
    make = helpers.tiny_llama if family == "llama" else helpers.tiny_gpt2
    return causal_lm.HFCausalLM(make(tokenizer, seed=3), tokenizer, device="cpu", **kwargs)


def exact_sig(lm: causal_lm.HFCausalLM, examples: list[dict], config: dict = EXACT) -> list[np.ndarray]:
    results = lit_sig.SequentialIntegratedGradients().run(examples, lm, None, config=config)
    return [np.asarray(r[causal_lm.GRADIENTS_FIELD].salience, dtype=np.float64) for r in results]


def direct_occlusion(lm: causal_lm.HFCausalLM, example: dict) -> tuple[np.ndarray, float]:
    """F(x) - F(x with token i at zero) for every movable token i, by whole forwards of the full model; F(x)."""
    tok = lm.tokenizer
    prompt = tok(example["prompt"])["input_ids"]
    target = tok(example["target"], add_special_tokens=False)["input_ids"]
    ids = torch.tensor(prompt + target)  # [L]
    targets = torch.arange(len(prompt), len(ids))  # [K]
    movable = [i not in tok.all_special_ids and j < int(targets[-1]) for j, i in enumerate(ids.tolist())]

    def score(embs: torch.Tensor) -> float:
        log_probs = torch.log_softmax(lm.model(inputs_embeds=embs[None]).logits[0].float(), -1)  # [L, V]
        return float(log_probs[targets - 1, ids[targets]].sum())

    with torch.no_grad():
        x = lm.model.get_input_embeddings()(ids)  # [L, D]
        at_input = score(x)
        expected = np.zeros(len(ids))
        for i in np.flatnonzero(movable):
            occluded = x.clone()
            occluded[i] = 0.0
            expected[i] = at_input - score(occluded)
    return expected, at_input


def assert_close(ours: np.ndarray, expected: np.ndarray, score: float) -> None:
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5 * max(abs(score), np.abs(expected).max()))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("rows_per_pass", [None, 1, 5, 64])  # Pieces of one row, split across passes, in blocks.
def test_reused_prefix_equals_direct_occlusion_and_the_plain_rows(family, rows_per_pass):
    lm = build(family, max_rows_per_pass=rows_per_pass)
    together = exact_sig(lm, EXAMPLES)
    reused = lm.prefix_cache.rows_reused
    assert reused == sum(1 + int(np.count_nonzero(s)) for s in together) and lm.prefix_cache.rows_plain == 0
    scores = lm.score(EXAMPLES)
    for example, ours in zip(EXAMPLES, together):
        assert_close(ours, *direct_occlusion(lm, example))
    lm.prefix_cache.enabled = False
    plain = exact_sig(lm, EXAMPLES)
    assert lm.prefix_cache.rows_plain == reused
    for ours, expected, score in zip(together, plain, scores):
        assert_close(ours, expected, score)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_prompts_of_different_lengths_in_one_call_equal_each_alone(family):
    lm = build(family, max_rows_per_pass=16)
    together = exact_sig(lm, EXAMPLES)
    for example, ours, score in zip(EXAMPLES, together, lm.score(EXAMPLES)):
        (alone,) = exact_sig(lm, [example])
        assert_close(ours, alone, score)
    assert lm.prefix_cache.rows_plain == 0


def test_gradient_rows_never_use_the_cache_and_ig_endpoints_do():
    lm = build("llama")
    config = {**EXACT, interpreters.METHOD_KEY: "riemann_trapezoid", interpreters.INTERPOLATION_KEY: 4}
    (result,) = lit_sig.IntegratedGradients().run(EXAMPLES[:1], lm, None, config=config)
    assert lm.prefix_cache.rows_reused == 2 and lm.prefix_cache.rows_plain == 0  # F(x) and F(baseline).
    lm.prefix_cache.enabled = False
    (plain,) = lit_sig.IntegratedGradients().run(EXAMPLES[:1], lm, None, config=config)
    assert result[interpreters.COMPLETENESS_KEY] == pytest.approx(plain[interpreters.COMPLETENESS_KEY], abs=1e-5)


class _ScaledLogits(transformers.LlamaForCausalLM):
    """A Llama whose forward scales its logits after the head: the head at the targets can't be used."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out


def _sliding_mistral(tokenizer: transformers.PreTrainedTokenizerBase) -> transformers.MistralForCausalLM:
    torch.manual_seed(0)
    config = transformers.MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        sliding_window=4,  # Its cache keeps the last 4 positions only: a prefix can't be cut from it.
        initializer_range=0.1,
    )
    return transformers.MistralForCausalLM(config).eval()


@pytest.mark.parametrize("make", ["scaled_logits", "sliding_window"])
def test_the_plain_rows_run_where_the_cache_cant_be_trusted(make):
    tokenizer = helpers.tiny_lm_tokenizer(chat=False)
    if make == "scaled_logits":
        model = _ScaledLogits(helpers.tiny_llama(tokenizer).config).eval()
    else:
        model = _sliding_mistral(tokenizer)
    lm = causal_lm.HFCausalLM(model, tokenizer, device="cpu")
    (ours,) = exact_sig(lm, EXAMPLES[:1])
    assert lm.prefix_cache.rows_reused == 0 and lm.prefix_cache.rows_plain > 0
    assert lm.prefix_cache.reason
    assert_close(ours, *direct_occlusion(lm, EXAMPLES[0]))


def test_out_of_memory_with_reuse_scores_the_rest_as_whole_rows(monkeypatch):
    lm = build("llama", max_rows_per_pass=64)
    expected = exact_sig(lm, EXAMPLES)
    real, calls = prefix_cache.PrefixCache._piece_scores, []

    def fail_second(self, p, piece_rows):
        calls.append(len(piece_rows))
        if len(calls) == 2:
            raise torch.OutOfMemoryError("simulated")
        return real(self, p, piece_rows)

    monkeypatch.setattr(prefix_cache.PrefixCache, "_piece_scores", fail_second)
    reused, plain = lm.prefix_cache.rows_reused, lm.prefix_cache.rows_plain
    together = exact_sig(lm, EXAMPLES)
    assert lm.prefix_cache.rows_reused - reused == calls[0]  # The first piece, before the failure.
    assert lm.prefix_cache.rows_plain - plain == sum(1 + int(np.count_nonzero(s)) for s in expected) - calls[0]
    for ours, theirs, score in zip(together, expected, lm.score(EXAMPLES)):
        assert_close(ours, theirs, score)
