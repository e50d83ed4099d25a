"""The device path (rows built and summed where the model runs) against the generic `predict` path,
exact SIG against an independent occlusion, and the protocol found through LIT's wrappers."""

import numpy as np
import pytest
import torch
from lit_nlp.lib import caching

import lit_sig
from lit_sig import models
from lit_sig.core import cancellation, engine
from lit_sig.lit import interpreters, protocol
from tests.helpers import (
    CASES,
    FLOAT32_COMPOSED,
    PAIR,
    SENTENCE,
    PassRecorder,
    PredictOnly,
    assert_close_in_float32,
    occlusion,
    run,
    salience,
    salience_fields,
    tiny_bert,
    untrimmed,
)

EXACT = {interpreters.METHOD_KEY: interpreters.EXACT_METHOD}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("interpreter", [lit_sig.IntegratedGradients, lit_sig.SequentialIntegratedGradients])
@pytest.mark.parametrize("baseline", interpreters.BASELINES)
def test_device_path_equals_predict_path(request, case, interpreter, baseline):
    """The same attributions by both paths: to 1e-6 with the same arithmetic (the full model), and
    to float32 rounding with the device path's trimmed last layer (a different summation order)."""
    fixture, example = CASES[case]
    model = request.getfixturevalue(fixture)
    assert model.trimmed
    full = untrimmed(model)
    config = {interpreters.INTERPOLATION_KEY: 8, interpreters.BASELINE_KEY: baseline}
    generic = run(interpreter(), PredictOnly(model), [example], **config)[0]
    for device_model, rtol in ((full, 1e-6), (model, 1e-5)):
        device = run(interpreter(), device_model, [example], **config)[0]
        for field in salience_fields(model):
            ours, theirs = salience(device, field), salience(generic, field)
            np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * np.abs(theirs).max())
        assert device[interpreters.COMPLETENESS_KEY] == pytest.approx(generic[interpreters.COMPLETENESS_KEY], abs=1e-5)


def test_several_examples_in_one_run_equal_one_at_a_time(tiny_model):
    examples = [{"sentence": s} for s in (SENTENCE, "bad", "not a good film at all , sadly", "it works")]
    for interpreter in (lit_sig.IntegratedGradients(), lit_sig.SequentialIntegratedGradients()):
        together = run(interpreter, tiny_model, examples, **{interpreters.INTERPOLATION_KEY: 6})
        for example, result in zip(examples, together):
            alone = run(interpreter, tiny_model, [example], **{interpreters.INTERPOLATION_KEY: 6})[0]
            assert_close_in_float32(salience(result), salience(alone))  # Other batch mates, padding.


def test_rows_of_several_examples_share_passes(tiny_model):
    prepared = tiny_model.path_inputs(
        [{"sentence": "good"}, {"sentence": "bad"}], [None, None], ["input_embs_sentence"]
    )
    problems = [
        engine.PathProblem(p, p.x, torch.zeros_like(p.x), torch.ones(1, len(p.x), dtype=torch.bool), p.input_score)
        for p in prepared
    ]
    recorder = PassRecorder(tiny_model, rows_per_pass=16)
    results = engine.path_attributions(problems, recorder, *lit_sig.core.quadrature.quadrature("gausslegendre", 10))
    # 2 x 10 gradient rows in passes of at most 16, the first holding both examples; then 2 endpoint rows.
    assert recorder.passes == [(2, 16, True), (1, 4, True), (2, 2, False)]
    alone = engine.path_attributions(problems[1:], tiny_model, *lit_sig.core.quadrature.quadrature("gausslegendre", 10))
    assert_close_in_float32(results[1].token_attributions.numpy(), alone[0].token_attributions.numpy())


def test_protocol_found_through_caching_model_wrapper(tiny_model, monkeypatch):
    """LIT's server wraps every model: the device path and the [MASK] baseline must still be used."""
    wrapped = caching.CachingModelWrapper(tiny_model, "tiny")
    assert protocol.find_device_path(wrapped) is tiny_model
    assert protocol.find_capability(wrapped, protocol.BASELINE_METHOD) == tiny_model.baseline_embedding
    passes = []
    real = tiny_model.score_rows
    monkeypatch.setattr(tiny_model, "score_rows", lambda pieces, g: passes.append(g) or real(pieces, g))
    example = {"sentence": SENTENCE, "label": "1"}
    for baseline in interpreters.BASELINES:
        config = {interpreters.BASELINE_KEY: baseline, interpreters.INTERPOLATION_KEY: 5}
        served = salience(run(lit_sig.SequentialIntegratedGradients(), wrapped, [example], **config)[0])
        direct = salience(run(lit_sig.SequentialIntegratedGradients(), tiny_model, [example], **config)[0])
        np.testing.assert_array_equal(served, direct)
    assert passes  # The rows went through the device path, not through `predict`.
    zero = salience(
        run(lit_sig.SequentialIntegratedGradients(), wrapped, [example], **{interpreters.BASELINE_KEY: "zero"})[0]
    )
    mask = salience(
        run(lit_sig.SequentialIntegratedGradients(), wrapped, [example], **{interpreters.BASELINE_KEY: "mask"})[0]
    )
    assert np.abs(zero - mask).max() > 1e-3


# Exact SIG.


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("baseline", interpreters.BASELINES)
def test_exact_sig_equals_occlusion(request, case, baseline):
    fixture, example = CASES[case]
    model = request.getfixturevalue(fixture)
    result = run(
        lit_sig.SequentialIntegratedGradients(), model, [example], **EXACT, **{interpreters.BASELINE_KEY: baseline}
    )[0]
    ours = np.concatenate([salience(result, f) for f in salience_fields(model)])
    target = 0 if model.labels is None else model.labels.index(example["label"])
    theirs = occlusion(model, tuple(example[f] for f in model.text_fields), target, baseline)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())
    assert result[interpreters.COMPLETENESS_KEY] == 0.0


@pytest.mark.parametrize("case", CASES)
def test_500_step_sig_converges_to_occlusion_and_its_delta_says_how_far(request, case):
    """SIG's token salience is occlusion (per-token completeness): 500 Gauss-Legendre steps on a
    smooth model leave only float32 rounding, and the reported delta is the measured distance."""
    fixture, example = CASES[case]
    model = request.getfixturevalue(fixture)
    target = 0 if model.labels is None else model.labels.index(example["label"])
    theirs = occlusion(model, tuple(example[f] for f in model.text_fields), target, interpreters.DEFAULT_BASELINE)
    scale = np.abs(theirs).max()
    fine = run(lit_sig.SequentialIntegratedGradients(), model, [example], **{interpreters.INTERPOLATION_KEY: 500})[0]
    ours = np.concatenate([salience(fine, f) for f in salience_fields(model)])
    delta = fine[interpreters.COMPLETENESS_KEY]
    assert 0 <= delta <= 1e-4 * scale  # float32 sums of 500 rows per token; the quadrature error is far below.
    assert delta == pytest.approx(np.abs(ours - theirs).max(), abs=3e-5 * scale)  # Both float32 roundings.
    exact = run(lit_sig.SequentialIntegratedGradients(), model, [example], **EXACT)[0]
    exact_ours = np.concatenate([salience(exact, f) for f in salience_fields(model)])
    np.testing.assert_allclose(exact_ours, ours, rtol=0, atol=delta + 1e-5 * scale)


def test_exact_sig_is_t_plus_one_forward_passes(tiny_pair_model):
    calls = []

    def record(module, args, kwargs, output):
        calls.append((kwargs["inputs_embeds"].shape[0], torch.is_inference_mode_enabled(), torch.is_grad_enabled()))

    handle = tiny_pair_model.model.register_forward_hook(record, with_kwargs=True)
    try:
        result = run(lit_sig.SequentialIntegratedGradients(), tiny_pair_model, [PAIR], **EXACT)[0]
    finally:
        handle.remove()
    T = sum(len(result[f].tokens) for f in salience_fields(tiny_pair_model))
    assert sum(rows for rows, _, _ in calls) == T + 1
    assert all(inference and not grad for _, inference, grad in calls)  # No backward pass is possible.


def _passes_of(model: models.HFSequenceClassifier, interpreter, example: dict, **config) -> tuple[list, dict]:
    """`(rows, with grads)` of each model pass of one explanation, and its result."""
    calls = []

    def record(module, args, kwargs, output):
        calls.append((kwargs["inputs_embeds"].shape[0], torch.is_grad_enabled()))

    handle = model.model.register_forward_hook(record, with_kwargs=True)
    try:
        return calls, run(interpreter, model, [example], **config)[0]
    finally:
        handle.remove()


@pytest.mark.parametrize("model_name", ["tiny_model", "regression_model"])
def test_a_known_class_saves_the_input_pass(request, model_name):
    """With the class known (label field, 'Class to explain', or regression) x is scored beside the other rows."""
    model = request.getfixturevalue(model_name)
    unlabelled = {"sentence": SENTENCE}
    prediction = list(model.predict([unlabelled]))[0]
    labelled = {**unlabelled, "label": prediction["label"]} if model.labels else unlabelled
    T, n = len(prediction["tokens_sentence"]), 4  # T * n rows fit in one pass (32 on the CPU).
    steps = {interpreters.INTERPOLATION_KEY: n}
    cases = [
        (lit_sig.SequentialIntegratedGradients(), EXACT, [(T + 1, False)]),
        (lit_sig.IntegratedGradients(), steps, [(n, True), (2, False)]),
        (lit_sig.SequentialIntegratedGradients(), steps, [(T * n, True), (T + 1, False)]),
    ]
    for interpreter, config, expected in cases:
        passes, known = _passes_of(model, interpreter, labelled, **config)
        assert passes == expected  # One pass fewer than with a class to predict, below.
        if model.labels:
            passes, guessed = _passes_of(model, interpreter, unlabelled, **config)
            (rows, _), *rest = reversed(expected)  # The input's row moves to a pass of its own.
            assert passes == [(1, False)] + list(reversed(rest)) + [(rows - 1, False)]
            # F(x) in another pass: the same up to float32 rounding of scores of order 1.
            assert_close_in_float32(salience(known), salience(guessed))
            assert known[interpreters.COMPLETENESS_KEY] == pytest.approx(
                guessed[interpreters.COMPLETENESS_KEY],
                abs=FLOAT32_COMPOSED,  # Scores of order 1.
            )
    # 'Class to explain' decides as the label field does: the other class, still one pass fewer.
    other = "0" if prediction.get("label") == "1" else "1"
    if model.labels:
        passes, result = _passes_of(
            model, lit_sig.SequentialIntegratedGradients(), unlabelled, **EXACT, **{interpreters.CLASS_KEY: other}
        )
        assert passes == [(T + 1, False)]
        flipped = run(lit_sig.SequentialIntegratedGradients(), model, [{**unlabelled, "label": other}], **EXACT)[0]
        np.testing.assert_allclose(salience(result), salience(flipped), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("label", [None, "1"])
def test_an_input_with_nothing_to_move(tiny_model, label):
    """Only special tokens: every method gives zeros and a zero delta, with or without a known class.

    Through `predict` (no device path) a token whose text is special never moves; on the device path
    the model says which tokens move, and a typed "[SEP]" is a word (tests/test_interpreters.py).
    """
    example = {"sentence": "[SEP]"} | ({} if label is None else {"label": label})
    for interpreter, config in (
        (lit_sig.SequentialIntegratedGradients(), EXACT),
        (lit_sig.SequentialIntegratedGradients(), {interpreters.INTERPOLATION_KEY: 4}),
        (lit_sig.IntegratedGradients(), {interpreters.INTERPOLATION_KEY: 4}),
    ):
        result = run(interpreter, PredictOnly(tiny_model), [example], **config)[0]
        assert result["token_grad_sentence"].tokens == ["[SEP]"]
        np.testing.assert_array_equal(salience(result), [0.0])
        # IG: F(x) - F(baseline = x), two rows of one pass: zero up to float32 rounding.
        assert result[interpreters.COMPLETENESS_KEY] == pytest.approx(0.0, abs=1e-6)


def test_exact_through_predict_when_the_model_has_no_device_path(tiny_model):
    example = {"sentence": SENTENCE, "label": "0"}
    generic = run(lit_sig.SequentialIntegratedGradients(), PredictOnly(tiny_model), [example], **EXACT)[0]
    device = run(lit_sig.SequentialIntegratedGradients(), tiny_model, [example], **EXACT)[0]
    np.testing.assert_allclose(salience(generic), salience(device), rtol=1e-5, atol=1e-7)


def test_exact_config_errors(tiny_model):
    with pytest.raises(ValueError, match="closed form; IG has none"):
        run(lit_sig.IntegratedGradients(), tiny_model, [{"sentence": SENTENCE}], **EXACT)
    with pytest.raises(ValueError, match="Adaptive steps.*doesn't apply"):
        run(
            lit_sig.SequentialIntegratedGradients(),
            tiny_model,
            [{"sentence": SENTENCE}],
            **EXACT,
            **{interpreters.ADAPTIVE_KEY: True},
        )
    spec = lit_sig.SequentialIntegratedGradients().config_spec()[interpreters.METHOD_KEY]
    assert interpreters.EXACT_METHOD in spec.vocab
    assert interpreters.EXACT_METHOD not in lit_sig.IntegratedGradients().config_spec()[interpreters.METHOD_KEY].vocab


# Models that declare no target score.


def test_no_target_score_refuses_what_needs_it(tiny_model):
    plain = PredictOnly(tiny_model, with_score=False)
    example = {"sentence": SENTENCE, "label": "1"}
    for config in (EXACT, {interpreters.ADAPTIVE_KEY: True}):
        with pytest.raises(ValueError, match=protocol.TARGET_SCORE_FIELD):
            run(lit_sig.SequentialIntegratedGradients(), plain, [example], **config)
    fixed = run(lit_sig.IntegratedGradients(), plain, [example], **{interpreters.INTERPOLATION_KEY: 8})[0]
    reference = run(lit_sig.IntegratedGradients(), tiny_model, [example], **{interpreters.INTERPOLATION_KEY: 8})[0]
    np.testing.assert_allclose(salience(fixed), salience(reference), rtol=1e-5, atol=1e-7)
    assert fixed[interpreters.COMPLETENESS_KEY] is None  # Unmeasured, never NaN.


# Out of memory, row budgets, cancellation.


def test_out_of_memory_in_a_pass_retries_halves(tiny_model, monkeypatch):
    example = {"sentence": SENTENCE, "label": "1"}
    config = {interpreters.INTERPOLATION_KEY: 20}
    reference = run(lit_sig.SequentialIntegratedGradients(), tiny_model, [example], **config)[0]
    real, sizes = tiny_model._score_pass, []

    def flaky(pieces, with_grads):
        rows = sum(len(r) for _, r in pieces)
        sizes.append(rows)
        if rows > 5:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pieces, with_grads)

    monkeypatch.setattr(tiny_model, "_score_pass", flaky)
    result = run(lit_sig.SequentialIntegratedGradients(), tiny_model, [example], **config)[0]
    assert_close_in_float32(salience(result), salience(reference))  # Halved passes.
    assert max(sizes) > 5 and any(s <= 5 for s in sizes)


def test_device_row_budget_fits_free_memory():
    free = {"bytes": 8 << 30}
    budget = models.DeviceRowBudget(lambda: free["bytes"], max_rows=1024, probe_rows=64, memory_fraction=0.5)
    assert budget.rows(130, True) == 64 and budget.needs_measure(130, True)
    budget.observe(130, True, rows=64, peak_bytes=64 * (16 << 20))  # 16 MiB a row.
    assert not budget.needs_measure(140, True)  # Same bucket of 16 tokens.
    assert budget.rows(130, True) == 256  # Half of 8 GiB / 16 MiB.
    assert budget.needs_measure(130, False) and budget.needs_measure(200, True)
    budget.observe(20, False, rows=64, peak_bytes=64 * (1 << 20))
    assert budget.rows(20, False) == 1024  # Capped.
    budget.shrink(130, True, 256)
    assert budget.rows(130, True) == 128


def test_cancelled_scope_stops_an_explanation(tiny_model):
    passes = []

    def stop_after_two() -> str | None:
        passes.append(1)
        return "deadline passed" if len(passes) > 2 else None

    with cancellation.scope(stop_after_two), pytest.raises(cancellation.Cancelled, match="deadline"):
        run(
            lit_sig.SequentialIntegratedGradients(),
            tiny_model,
            [{"sentence": SENTENCE}],
            **{interpreters.INTERPOLATION_KEY: 100},
        )
    assert len(passes) == 3


def test_score_only_rows_stay_float32_under_bfloat16(tokenizer):
    """Exact SIG is a difference of scores: in bfloat16 it would be mostly rounding, so it runs in float32."""
    example = {"sentence": SENTENCE, "label": "1"}
    fp32 = models.HFSequenceClassifier(tiny_bert(), tokenizer, device="cpu")
    bf16 = models.HFSequenceClassifier(tiny_bert(), tokenizer, device="cpu", precision="bfloat16")
    exact = [salience(run(lit_sig.SequentialIntegratedGradients(), m, [example], **EXACT)[0]) for m in (fp32, bf16)]
    np.testing.assert_allclose(exact[1], exact[0], rtol=1e-6, atol=1e-9)
    # Gradient rows do run in bfloat16: fixed-step SIG moves, and its delta (against float32 endpoints) shows it.
    fixed = [
        run(lit_sig.SequentialIntegratedGradients(), m, [example], **{interpreters.INTERPOLATION_KEY: 8})[0]
        for m in (fp32, bf16)
    ]
    assert np.abs(salience(fixed[1]) - salience(fixed[0])).max() > 1e-4 * np.abs(salience(fixed[0])).max()
    assert fixed[1][interpreters.COMPLETENESS_KEY] > fixed[0][interpreters.COMPLETENESS_KEY]


def test_torch_compile_gives_eager_results(tiny_model, tokenizer):
    """`torch_compile=True` runs the gradient passes compiled; IG and SIG equal the eager model's."""
    compiled = models.HFSequenceClassifier(tiny_bert(), tokenizer, device="cpu", torch_compile=True)
    calls = []
    module = compiled.runner.compiled

    def counting(*args, **kwargs):
        calls.append(len(kwargs["inputs_embeds"]))
        return module(*args, **kwargs)

    compiled.runner.compiled = counting
    examples = [{"sentence": SENTENCE}, {"sentence": "not bad"}]  # Rows of both share the first pass: padding.
    for interpreter in (lit_sig.SequentialIntegratedGradients(), lit_sig.IntegratedGradients()):
        config = {interpreters.INTERPOLATION_KEY: 6}
        ours, eager = (run(interpreter, m, examples, **config) for m in (compiled, tiny_model))
        for a, b in zip(ours, eager):
            np.testing.assert_allclose(salience(a), salience(b), rtol=1e-5, atol=1e-7)
            assert a[interpreters.COMPLETENESS_KEY] == pytest.approx(b[interpreters.COMPLETENESS_KEY], abs=1e-6)
    assert sum(calls) == 6 * (6 + 2) + 6 * 2  # Every gradient row went through the compiled module.


def test_passes_without_padding_carry_no_attention_mask(tokenizer):
    """A Hugging Face model gets attention_mask=None when no row of a pass is padded, a mask otherwise."""
    model = models.HFSequenceClassifier(tiny_bert(), tokenizer, device="cpu", max_rows_per_pass=1000)
    masks = []

    def record(module, args, kwargs):
        masks.append(kwargs["attention_mask"])

    handle = model.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        config = {interpreters.INTERPOLATION_KEY: 4}
        alone = run(lit_sig.IntegratedGradients(), model, [{"sentence": SENTENCE}], **config)
        assert masks[0] is not None and all(m is None for m in masks[1:])  # path_inputs embeds: a mask.
        masks.clear()
        together = run(
            lit_sig.IntegratedGradients(), model, [{"sentence": SENTENCE}, {"sentence": "not bad"}], **config
        )
    finally:
        handle.remove()
    # The gradient pass and the endpoint pass each hold both examples' rows: padded, so masked.
    assert len(masks) == 3 and all(m is not None for m in masks)
    assert masks[1].sum(-1).tolist() == [8] * 4 + [4] * 4  # [CLS] + tokens + [SEP], per row.
    assert_close_in_float32(salience(together[0]), salience(alone[0]))
