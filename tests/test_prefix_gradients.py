"""Gradient rows that start where they first differ from the input (`lit_sig.models.prefix_gradients`).

References: captum's IntegratedGradients on a forward of the full model's logits written here, and
lit_sig's own whole rows (`prefix_gradients` off), to 1e-5 of the scale; `predict`'s gradients stay
those of every position.
"""

import captum.attr
import numpy as np
import pytest
import torch

import lit_sig
from lit_sig.lit import interpreters
from lit_sig.models import causal_lm, prefix_gradients
from lit_sig.models import rows as models_rows
from tests import helpers

SYSTEM = "You are a careful assistant who answers in one word."
EXAMPLES = [
    {"prompt": "The capital of France is", "target": " Paris, a city."},
    {"prompt": "Is this review positive or negative? The movie was wonderful and long.", "target": " Great"},
    {"prompt": "Two plus two", "target": " is four."},
]
RAW = {interpreters.NORMALIZATION_KEY: False, interpreters.BASELINE_KEY: "zero"}
METHODS = {
    "ig": (lit_sig.IntegratedGradients, {interpreters.INTERPOLATION_KEY: 6}),  # Passes of 8 rows mix prompts.
    "sig": (lit_sig.SequentialIntegratedGradients, {interpreters.INTERPOLATION_KEY: 3}),
}


def build(family: str, **kwargs) -> causal_lm.HFCausalLM:
    tokenizer = helpers.tiny_lm_tokenizer(bos=family == "llama", chat=True)
    make = helpers.tiny_llama if family == "llama" else helpers.tiny_gpt2
    return causal_lm.HFCausalLM(
        make(tokenizer, seed=5), tokenizer, device="cpu", chat_template=True, system_prompt=SYSTEM, **kwargs
    )


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request) -> causal_lm.HFCausalLM:
    return build(request.param)


def salience(results: list[dict]) -> list[np.ndarray]:
    return [np.asarray(r[causal_lm.GRADIENTS_FIELD].salience, dtype=np.float64) for r in results]


def run(lm: causal_lm.HFCausalLM, method: str, examples: list[dict], prefix: bool) -> list[np.ndarray]:
    interpreter, config = METHODS[method]
    lm.prefix_gradients.enabled = prefix
    try:
        return salience(interpreter().run(examples, lm, None, config={**RAW, **config}))
    finally:
        lm.prefix_gradients.enabled = True


def first_movable(lm: causal_lm.HFCausalLM, example: dict) -> int:
    (p,) = lm.path_inputs([example], [None], [causal_lm.EMBEDDINGS_FIELD])
    return int(p.movable.int().argmax())


def assert_close(ours: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_the_system_message_never_moves(lm):
    assert all(first_movable(lm, e) > 10 for e in EXAMPLES)  # The template's markers and system message.


@pytest.mark.parametrize("method", list(METHODS))
def test_rows_from_their_first_change_equal_whole_rows(lm, method):
    reused, skipped = lm.prefix_gradients.rows_reused, lm.prefix_gradients.positions_skipped
    ours = run(lm, method, EXAMPLES, prefix=True)
    rows = lm.prefix_gradients.rows_reused - reused
    skipped = lm.prefix_gradients.positions_skipped - skipped
    steps = METHODS[method][1][interpreters.INTERPOLATION_KEY]
    firsts = [first_movable(lm, e) for e in EXAMPLES]
    if method == "ig":  # Every row starts at its input's first movable token.
        assert rows == steps * len(EXAMPLES) and skipped == steps * sum(firsts)
    else:  # Token i's rows start at i, or earlier where a block holds rows of an earlier token.
        movable = [np.flatnonzero(s) for s in ours]
        assert rows == steps * sum(len(m) for m in movable)
        assert (
            steps * sum(len(m) * a for m, a in zip(movable, firsts)) < skipped <= steps * sum(m.sum() for m in movable)
        )
    whole = run(lm, method, EXAMPLES, prefix=False)
    for o, w in zip(ours, whole):
        assert_close(o, w)


def test_ig_equals_captum_on_a_direct_forward(lm):
    example, steps = EXAMPLES[1], 16
    (p,) = lm.path_inputs([example], [None], [causal_lm.EMBEDDINGS_FIELD])
    ids = torch.tensor(p.encoding.input_ids)
    targets = p.score_positions + 1  # [K]
    movable = p.movable.clone()

    def forward(embs: torch.Tensor) -> torch.Tensor:  # [N, L, D] -> F [N], from the model's full logits
        log_probs = torch.log_softmax(lm.model(inputs_embeds=embs).logits.float()[:, targets - 1], -1)  # [N, K, V]
        return log_probs.gather(-1, ids[targets][None, :, None].expand(len(embs), -1, 1)).sum((1, 2))

    with torch.no_grad():
        x = lm.model.get_input_embeddings()(ids)  # [L, D]
    baseline = torch.where(movable[:, None], torch.zeros_like(x), x)
    theirs = (
        captum.attr.IntegratedGradients(forward)
        .attribute(x[None], baselines=baseline[None], n_steps=steps, method="gausslegendre")[0]
        .sum(-1)
        .detach()
        .double()
        .numpy()
    )
    reused = lm.prefix_gradients.rows_reused
    (result,) = lit_sig.IntegratedGradients().run(
        [example], lm, None, config={**RAW, interpreters.INTERPOLATION_KEY: steps}
    )
    assert lm.prefix_gradients.rows_reused - reused == steps
    ours = np.asarray(result[causal_lm.GRADIENTS_FIELD].salience, dtype=np.float64)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


@pytest.mark.parametrize("method", list(METHODS))
def test_prompts_of_different_lengths_share_blocks_and_equal_each_alone(lm, method, monkeypatch):
    lengths = []
    real_block = prefix_gradients.PrefixGradients._block

    def counting_block(self, pieces, states, segments, start):
        lengths.append(len({len(pieces[i][0].full) for i, _ in segments}))
        return real_block(self, pieces, states, segments, start)

    monkeypatch.setattr(prefix_gradients.PrefixGradients, "_block", counting_block)
    together = run(lm, method, EXAMPLES, prefix=True)
    assert max(lengths) > 1  # Right padding: rows of prompts of different lengths in one block.
    for example, t in zip(EXAMPLES, together):
        (alone,) = run(lm, method, [example], prefix=True)
        assert_close(t, alone)


def test_predict_keeps_the_gradient_of_every_position(lm):
    (output,) = lm.predict([EXAMPLES[0]])
    grads = np.asarray(output[causal_lm.GRADIENTS_FIELD])  # [L, D]
    assert np.linalg.norm(grads[: first_movable(lm, EXAMPLES[0])], axis=-1).min() > 0  # Fixed tokens too.


def test_gradients_start_at_each_rows_first_change(lm):
    (p,) = lm.path_inputs([EXAMPLES[0]], [None], [causal_lm.EMBEDDINGS_FIELD])
    rows = p.x.expand(3, -1, -1).clone()  # [3, T, D]
    rows[0, 1] = 0.0  # Moves a fixed token: from position 1 on.
    rows[1, -3] = 0.0  # Moves a late token: from there on, in the block of the earliest row.
    # Row 2 is the input: from the first movable token on.
    ((scores, grads),) = lm.score_rows([(p, rows)], with_grads=True)
    ((whole_scores, whole_grads),) = lm._plain_score_rows([(p, rows)], with_grads=True)
    torch.testing.assert_close(scores, whole_scores)
    torch.testing.assert_close(grads[:, 1:], whole_grads[:, 1:])  # One block, from position 1.
    assert float(grads[:, 0].abs().max()) == 0 and float(whole_grads[:, 0].abs().max()) > 0


def test_out_of_memory_falls_back_to_whole_rows(lm, monkeypatch):
    expected = run(lm, "ig", EXAMPLES, prefix=False)

    def out_of_memory(self, pieces):
        raise torch.OutOfMemoryError("test")

    monkeypatch.setattr(prefix_gradients.PrefixGradients, "_pass", out_of_memory)
    for o, e in zip(run(lm, "ig", EXAMPLES, prefix=True), expected):
        assert_close(o, e)


def test_bfloat16_rows_agree_with_whole_rows_to_bfloat16_rounding():
    lm = build("llama", precision="bfloat16")
    reused = lm.prefix_gradients.rows_reused
    ours = run(lm, "ig", EXAMPLES[:1], prefix=True)[0]
    assert lm.prefix_gradients.rows_reused > reused
    whole = run(lm, "ig", EXAMPLES[:1], prefix=False)[0]
    # Both round every layer's activations to bfloat16 (8 bits of mantissa), in other batches.
    np.testing.assert_allclose(ours, whole, rtol=0, atol=0.1 * np.abs(whole).max())
    assert np.abs(ours).max() > 0


def test_passes_are_measured_for_the_cuda_row_budget(monkeypatch):
    """On CUDA the device path sizes passes from the first pass's peak memory; these passes must feed it too."""
    lm = build("llama")
    budget = models_rows.DeviceRowBudget(lambda: 1_000_000, max_rows=1024, probe_rows=4, memory_fraction=0.5)
    monkeypatch.setattr(lm.prefix_gradients, "_budget", budget)
    peaks = iter(range(10_000, 10_000_000, 10_000))  # Bytes: each pass's peak, as the fake device reports it.
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: next(peaks))
    (p,) = lm.path_inputs([EXAMPLES[0]], [None], [causal_lm.EMBEDDINGS_FIELD])
    reused = lm.prefix_gradients.rows_reused
    run(lm, "ig", EXAMPLES[:1], prefix=True)
    assert lm.prefix_gradients.rows_reused - reused == METHODS["ig"][1][interpreters.INTERPOLATION_KEY]
    assert not budget.needs_measure(len(p.full), True)
    # The first pass (IG's 6 rows) peaked at 10,000 bytes: 1,667 a row; half of 1e6 free bytes fits 300 rows.
    assert budget.rows(len(p.full), True) == 300


@pytest.mark.parametrize(
    "interpreter, config",
    [
        (lit_sig.IntegratedGradients, {interpreters.INTERPOLATION_KEY: 5, interpreters.METHOD_KEY: "riemann_right"}),
        (lit_sig.SequentialIntegratedGradients, {interpreters.ADAPTIVE_KEY: True}),
    ],
    ids=["ig_riemann_right", "sig_adaptive"],
)
def test_rules_with_rows_at_the_input_equal_whole_rows(lm, interpreter, config):
    """Rows at alpha 1 equal the input everywhere: they start at the first movable token, not at none."""
    results = {}
    for prefix in (True, False):
        lm.prefix_gradients.enabled = prefix
        try:
            results[prefix] = salience(interpreter().run(EXAMPLES, lm, None, config={**RAW, **config}))
        finally:
            lm.prefix_gradients.enabled = True
    for ours, whole in zip(results[True], results[False]):
        assert np.abs(whole).max() > 0
        assert_close(ours, whole)
