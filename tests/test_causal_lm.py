"""HFCausalLM on tiny random Llama and GPT-2 models, against independent references.

References: direct Hugging Face calls (the model's own logits), captum's IG and
time-interpret's SIG on a forward function written here over `inputs_embeds`, and
LIT 1.3's own `transformers_lms.HFSalienceModel` on the same model.
"""

import copy

import captum.attr
import numpy as np
import pytest
import torch
import transformers
from lit_nlp.lib import caching

import lit_sig
from lit_sig.lit import interpreters, protocol
from lit_sig.models import causal_lm, lm_encoding, lm_score
from tests import helpers

RAW = {interpreters.NORMALIZATION_KEY: False, interpreters.BASELINE_KEY: "zero"}
EXAMPLE = {"prompt": "The capital of France is", "target": " Paris."}
EXAMPLES = [
    EXAMPLE,
    {"prompt": "Is this review positive or negative? The movie was wonderful.", "target": " Great"},
    {"prompt": "Two plus two", "target": " is four."},
]
FAMILIES = ("llama", "gpt2")


def build(family: str, chat: bool = False, seed: int = 0, **kwargs) -> causal_lm.HFCausalLM:
    tokenizer = helpers.tiny_lm_tokenizer(bos=family == "llama", chat=chat)
    make = helpers.tiny_llama if family == "llama" else helpers.tiny_gpt2
    return causal_lm.HFCausalLM(make(tokenizer, seed), tokenizer, device="cpu", chat_template=chat, **kwargs)


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request) -> causal_lm.HFCausalLM:
    return build(request.param)


@pytest.fixture(scope="module")
def chat_lm() -> causal_lm.HFCausalLM:
    return build("llama", chat=True)


class Direct:
    """F and its pieces by direct Hugging Face calls on the full model (an independent reference)."""

    def __init__(self, lm: causal_lm.HFCausalLM, example: dict):
        tok = lm.tokenizer
        prompt = tok(example["prompt"])["input_ids"]
        target = tok(example["target"], add_special_tokens=False)["input_ids"]
        self.model = lm.model
        self.ids = torch.tensor(prompt + target)  # [L]
        self.targets = torch.arange(len(prompt), len(self.ids))  # [K]
        with torch.no_grad():
            self.x = lm.model.get_input_embeddings()(self.ids)  # [L, D]
        self.movable = torch.tensor([i not in tok.all_special_ids for i in self.ids.tolist()])
        self.movable[int(self.targets[-1]) :] = False

    def forward(self, embs: torch.Tensor) -> torch.Tensor:
        """`[N, L, D]` -> F `[N]` from the model's full logits."""
        logits = self.model(inputs_embeds=embs).logits.float()  # [N, L, V]
        log_probs = torch.log_softmax(logits[:, self.targets - 1], dim=-1)  # [N, K, V]
        return log_probs.gather(-1, self.ids[self.targets][None, :, None].expand(len(embs), -1, 1)).sum((1, 2))

    def baseline(self) -> torch.Tensor:
        """The zero baseline where tokens move, the input elsewhere: `[L, D]`."""
        return torch.where(self.movable[:, None], torch.zeros_like(self.x), self.x)


def salience(result: dict) -> np.ndarray:
    return np.asarray(result[causal_lm.GRADIENTS_FIELD].salience, dtype=np.float64)


def run(interpreter, lm, examples, **config) -> list[dict]:
    return interpreter.run(list(examples), lm, None, config={**RAW, **config})


# The score and the head at the targets.


def test_score_equals_direct_log_probs(lm):
    direct = Direct(lm, EXAMPLE)
    with torch.no_grad():
        expected = float(direct.forward(direct.x[None])[0])
    (output,) = lm.predict([EXAMPLE])
    assert lm.head_at_targets
    assert output[protocol.TARGET_SCORE_FIELD] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert output[causal_lm.TOKENS_FIELD] == [
        lm_encoding.clean_token(t) for t in lm.tokenizer.convert_ids_to_tokens(direct.ids.tolist())
    ]
    embs = direct.x[None].clone().requires_grad_(True)
    (grads,) = torch.autograd.grad(direct.forward(embs).sum(), embs)
    np.testing.assert_allclose(output[causal_lm.GRADIENTS_FIELD], grads[0].numpy(), rtol=1e-4, atol=1e-6)


class _ScaledLogits(transformers.LlamaForCausalLM):
    """A Llama whose forward scales its logits after the head (as Cohere's logit scale does)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out


def test_head_at_targets_falls_back_where_the_model_changes_its_logits():
    tokenizer = helpers.tiny_lm_tokenizer()
    model = _ScaledLogits(helpers.tiny_llama(tokenizer).config).eval()
    lm = causal_lm.HFCausalLM(model, tokenizer, device="cpu")
    assert not lm.head_at_targets
    direct = Direct(lm, EXAMPLE)
    with torch.no_grad():
        expected = float(direct.forward(direct.x[None])[0])
    assert lm.predict([EXAMPLE])[0][protocol.TARGET_SCORE_FIELD] == pytest.approx(expected, rel=1e-5)
    view = lm_score.target_log_probs_view(helpers.tiny_llama(tokenizer))
    assert view.head_at_targets


def test_target_mask_selects_the_tokens_summed(lm):
    direct = Direct(lm, EXAMPLE)
    L = len(direct.ids)
    mask = np.zeros(L)
    mask[int(direct.targets[0])] = 1.0  # The first target token only.
    mask[0] = 1.0  # Ignored: the first token is never predicted.
    with torch.no_grad():
        logits = lm.model(inputs_embeds=direct.x[None]).logits[0].float()
    j = int(direct.targets[0])
    expected = float(torch.log_softmax(logits[j - 1], -1)[direct.ids[j]])
    (output,) = lm.predict([{**EXAMPLE, "target_mask": mask}])
    assert output[protocol.TARGET_SCORE_FIELD] == pytest.approx(expected, rel=1e-5)
    # Tokens from the selected target on cannot change F.
    assert np.all(output[causal_lm.GRADIENTS_FIELD][j:] == 0)


# Methods against references.


def test_ig_equals_captum(lm):
    direct = Direct(lm, EXAMPLE)
    steps = 16
    theirs = (
        captum.attr.IntegratedGradients(direct.forward)
        .attribute(direct.x[None], baselines=direct.baseline()[None], n_steps=steps, method="gausslegendre")[0]
        .sum(-1)
        .detach()
        .numpy()
    )
    (result,) = run(lit_sig.IntegratedGradients(), lm, [EXAMPLE], **{interpreters.INTERPOLATION_KEY: steps})
    np.testing.assert_allclose(salience(result), theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())
    assert np.all(salience(result)[~direct.movable.numpy()] == 0)
    # The completeness delta: F(x) - F(baseline) - sum of the attributions.
    with torch.no_grad():
        gap = float(direct.forward(direct.x[None]) - direct.forward(direct.baseline()[None]))
    assert result[interpreters.COMPLETENESS_KEY] == pytest.approx(gap - theirs.sum(), abs=1e-4 * max(1, abs(gap)))


def test_sig_equals_time_interpret(lm):
    tint_attr = pytest.importorskip("tint.attr")
    direct = Direct(lm, EXAMPLE)
    movable = direct.movable.numpy()
    fixed = direct.x[~direct.movable]

    def forward(moving: torch.Tensor) -> torch.Tensor:  # [N, M, D] of the movable tokens -> [N, 1]
        embs = torch.empty(len(moving), *direct.x.shape)
        embs[:, direct.movable] = moving
        embs[:, ~direct.movable] = fixed
        return direct.forward(embs)[:, None]

    steps = 8
    theirs = (
        tint_attr.SequentialIntegratedGradients(forward)
        .attribute(
            direct.x[direct.movable][None],
            baselines=torch.zeros_like(direct.x[direct.movable])[None],
            target=0,
            n_steps=steps,
        )[0]
        .sum(-1)
        .detach()
        .numpy()
    )
    (result,) = run(lit_sig.SequentialIntegratedGradients(), lm, [EXAMPLE], **{interpreters.INTERPOLATION_KEY: steps})
    ours = salience(result)
    np.testing.assert_allclose(ours[movable], theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())
    assert np.all(ours[~movable] == 0)


def test_exact_sig_equals_occlusion_by_direct_calls(lm):
    direct = Direct(lm, EXAMPLE)
    with torch.no_grad():
        at_input = float(direct.forward(direct.x[None])[0])
        expected = np.zeros(len(direct.ids))
        for i in np.flatnonzero(direct.movable.numpy()):
            occluded = direct.x.clone()
            occluded[i] = 0.0
            expected[i] = at_input - float(direct.forward(occluded[None])[0])
    (result,) = run(
        lit_sig.SequentialIntegratedGradients(), lm, [EXAMPLE], **{interpreters.METHOD_KEY: interpreters.EXACT_METHOD}
    )
    np.testing.assert_allclose(salience(result), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert result[interpreters.COMPLETENESS_KEY] == 0.0


def test_gradient_fields_equal_lit_transformers_lms_up_to_its_sign(lm):
    """LIT 1.3's own salience model on the same model: its gradients are of the loss, -F."""
    from lit_nlp.examples.prompt_debugging import transformers_lms  # pylint: disable=import-outside-toplevel

    tokenizer = copy.deepcopy(lm.tokenizer)  # LIT sets its pad token to EOS.
    model = lm.model
    if not hasattr(model, "framework"):
        model.framework = "pt"  # LIT 1.3 reads transformers 4's `framework` attribute.
    lit_model = transformers_lms.HFSalienceModel(model=model, tokenizer=tokenizer)
    (ours,) = lm.predict([EXAMPLE])
    mask = np.zeros(len(ours[causal_lm.TOKENS_FIELD]))
    mask[Direct(lm, EXAMPLE).targets.numpy()] = 1.0
    (theirs,) = list(lit_model.predict([{**EXAMPLE, "target_mask": mask}]))
    assert theirs["tokens"] == ours[causal_lm.TOKENS_FIELD]
    scale = np.abs(theirs["grad_l2"]).max()
    np.testing.assert_allclose(ours["grad_l2"], theirs["grad_l2"], rtol=1e-4, atol=1e-6 * scale)
    scale = np.abs(theirs["grad_dot_input"]).max()
    np.testing.assert_allclose(ours["grad_dot_input"], -theirs["grad_dot_input"], rtol=1e-4, atol=1e-6 * scale)
    # lit_sig's interpreters read the same gradients.
    raw = {interpreters.NORMALIZATION_KEY: False}
    (norm,) = lit_sig.GradientNorm().run([EXAMPLE], lm, None, config=raw)
    np.testing.assert_allclose(salience(norm), ours["grad_l2"], rtol=1e-6)
    (dot,) = lit_sig.GradientDotInput().run([EXAMPLE], lm, None, config=raw)
    np.testing.assert_allclose(salience(dot), ours["grad_dot_input"], rtol=1e-5, atol=1e-7 * scale)


@pytest.mark.parametrize(
    "interpreter, config",
    [
        (lit_sig.IntegratedGradients(), {interpreters.INTERPOLATION_KEY: 8}),
        (lit_sig.SequentialIntegratedGradients(), {interpreters.INTERPOLATION_KEY: 4}),
        (lit_sig.SequentialIntegratedGradients(), {interpreters.METHOD_KEY: interpreters.EXACT_METHOD}),
    ],
    ids=["ig", "sig", "exact"],
)
def test_prompts_of_different_lengths_in_one_call_equal_each_alone(lm, interpreter, config):
    together = run(interpreter, lm, EXAMPLES, **config)
    for example, result in zip(EXAMPLES, together):
        (alone,) = run(interpreter, lm, [example], **config)
        ours, expected = salience(result), salience(alone)
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
        assert result[causal_lm.GRADIENTS_FIELD].tokens == alone[causal_lm.GRADIENTS_FIELD].tokens


def test_interpreters_find_the_device_path_through_lits_caching_wrapper(lm):
    wrapped = caching.CachingModelWrapper(lm, "lm")
    config = {interpreters.METHOD_KEY: interpreters.EXACT_METHOD}
    (ours,) = run(lit_sig.SequentialIntegratedGradients(), wrapped, [EXAMPLE], **config)
    (direct,) = run(lit_sig.SequentialIntegratedGradients(), lm, [EXAMPLE], **config)
    np.testing.assert_array_equal(salience(ours), salience(direct))


# Tokens that never move, generation, chat templates.


def test_chat_template_markers_and_bos_never_move(chat_lm):
    (output,) = chat_lm.predict([EXAMPLE])
    tokens = output[causal_lm.TOKENS_FIELD]
    assert tokens[:3] == ["<|im_start|>", "user", "\n"], tokens
    (result,) = run(
        lit_sig.SequentialIntegratedGradients(),
        chat_lm,
        [EXAMPLE],
        **{interpreters.METHOD_KEY: interpreters.EXACT_METHOD},
    )
    scores = salience(result)
    template = [i for i, t in enumerate(tokens) if t in ("<|im_start|>", "<|im_end|>", "user", "assistant")]
    assert template and np.all(scores[template] == 0)
    prompt_words = [i for i, t in enumerate(tokens) if t in ("The", "▁of", "▁France")]
    assert len(prompt_words) == 3 and np.all(scores[prompt_words] != 0), tokens
    assert scores[-1] == 0  # The last target token cannot change its own probability.


def test_generation_is_greedy_and_is_the_default_target(lm):
    prompt = {"prompt": "Hello world"}
    ids = lm.tokenizer(prompt["prompt"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=lm.max_new_tokens,
            do_sample=False,
            pad_token_id=lm.tokenizer.eos_token_id,
        )
    expected = lm.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    (output,) = lm.predict([prompt])
    assert output[causal_lm.RESPONSE_FIELD] == expected
    (given,) = lm.predict([{**prompt, "target": expected}])
    assert output[protocol.TARGET_SCORE_FIELD] == given[protocol.TARGET_SCORE_FIELD]
    assert output[causal_lm.TOKENS_FIELD] == given[causal_lm.TOKENS_FIELD]


def test_spec_matches_lits_prompt_debugging_fields(lm):
    from lit_nlp.examples.prompt_debugging import constants  # pylint: disable=import-outside-toplevel

    spec = lm.input_spec()
    for name, field in {**constants.INPUT_SPEC, **constants.INPUT_SPEC_SALIENCE}.items():
        assert type(spec[name]) is type(field) and spec[name].required == field.required
    out = lm.output_spec()
    for name in (*constants.OUTPUT_SPEC_GENERATION, *constants.OUTPUT_SPEC_SALIENCE):
        assert name in out, name
    assert lm.baseline_kinds()[0] == "zero"


@pytest.mark.parametrize(
    "example, message",
    [
        ({"prompt": ""}, "empty"),
        ({"target": "x"}, "prompt"),
        ({**EXAMPLE, "target_mask": [1.0, 0.0]}, "entries"),
        ({**EXAMPLE, "target_mask": [0.0] * 9}, "selects no token"),
    ],
)
def test_bad_inputs_get_clear_errors(lm, example, message):
    if "target_mask" in example and len(example["target_mask"]) == 9:
        example = {**example, "target_mask": [0.0] * len(lm.tokenize([EXAMPLE])[0])}
    with pytest.raises(ValueError, match=message):
        lm.predict([example])


def test_no_class_and_no_mask_token():
    lm = build("gpt2")
    with pytest.raises(ValueError, match="no class"):
        lm.path_inputs([EXAMPLE], ["1"], [causal_lm.EMBEDDINGS_FIELD])
    assert lm.baseline_embedding(causal_lm.EMBEDDINGS_FIELD, "mask") is None
    eos = lm.baseline_embedding(causal_lm.EMBEDDINGS_FIELD, "eos")
    np.testing.assert_array_equal(eos, lm.model.get_input_embeddings().weight[lm.tokenizer.eos_token_id].detach())


# captum's methods through the bridge.


def test_captum_feature_ablation_equals_exact_sig(chat_lm):
    from lit_sig.lit import captum_bridge  # pylint: disable=import-outside-toplevel

    config = {**RAW}
    (ablation,) = captum_bridge.CaptumInterpreter("FeatureAblation").run([EXAMPLE], chat_lm, None, config=config)
    (exact,) = run(
        lit_sig.SequentialIntegratedGradients(),
        chat_lm,
        [EXAMPLE],
        **{interpreters.METHOD_KEY: interpreters.EXACT_METHOD},
    )
    expected = salience(exact)
    np.testing.assert_allclose(salience(ablation), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("method", ["KernelShap", "Lime"])
def test_captum_surrogates_equal_captum_on_a_direct_forward(lm, method):
    """The bridge against captum run here on the movable tokens, same samples and seed."""
    from lit_sig.lit import captum_bridge  # pylint: disable=import-outside-toplevel

    direct = Direct(lm, EXAMPLE)
    movable = direct.movable
    M = int(movable.sum())

    def forward(moving: torch.Tensor) -> torch.Tensor:  # [N, M, D] -> [N]
        embs = direct.x.expand(len(moving), -1, -1).clone()
        embs[:, movable] = moving
        return direct.forward(embs)

    samples = 40
    torch.manual_seed(3)
    np.random.seed(3)
    theirs = getattr(captum.attr, method)(forward).attribute(
        direct.x[movable][None],
        baselines=torch.zeros(1, M, direct.x.shape[1]),
        feature_mask=torch.arange(M)[None, :, None].expand(1, M, direct.x.shape[1]),
        n_samples=samples,
        perturbations_per_eval=8,
    )[0, :, 0]
    config = {**RAW, "n_samples": samples, captum_bridge.SEED_KEY: 3}
    (ours,) = captum_bridge.CaptumInterpreter(method).run([EXAMPLE], lm, None, config=config)
    scores = salience(ours)
    assert np.all(scores[~movable.numpy()] == 0)
    expected = theirs.detach().double().numpy()
    np.testing.assert_allclose(scores[movable.numpy()], expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


# Long prompts and progress.


class _Recorder:
    def __init__(self):
        self.phases: list[list] = []

    def begin(self, phase, rows):
        self.phases.append([phase, rows, 0])

    def advance(self, rows):
        self.phases[-1][2] += rows

    def close(self):
        pass


def test_progress_reports_every_row_of_each_phase(lm):
    from lit_sig.core import progress  # pylint: disable=import-outside-toplevel

    steps = 4
    with progress.scope(_Recorder()) as recorder:
        run(lit_sig.IntegratedGradients(), lm, EXAMPLES, **{interpreters.INTERPOLATION_KEY: steps})
    # Gradient rows: `steps` per example; score rows: each example's input and all-baseline row.
    assert recorder.phases == [["gradient rows", 3 * steps, 3 * steps], ["score rows", 6, 6]]


def test_a_2048_token_prompt_runs_in_passes_of_bounded_rows():
    tokenizer = helpers.tiny_lm_tokenizer()
    lm = causal_lm.HFCausalLM(
        helpers.tiny_llama(tokenizer, max_positions=4096), tokenizer, device="cpu", max_minibatch_tokens=8192
    )
    words = "the movie was wonderful and the acting was great".split()
    prompt = " ".join(words[i % len(words)] for i in range(1320))
    example = {"prompt": prompt, "target": " great"}
    L = len(lm.tokenize([example])[0])
    assert 2048 <= L <= 2300, L
    assert lm.rows_per_pass(L, True) == 8192 // L
    (result,) = run(lit_sig.IntegratedGradients(), lm, [example], **{interpreters.INTERPOLATION_KEY: 2})
    assert np.isfinite(salience(result)).all() and salience(result)[0] == 0  # BOS never moves.


# Baselines.


def test_the_default_baseline_of_an_lm_is_zero_without_a_warning(lm, caplog):
    steps = {interpreters.INTERPOLATION_KEY: 4}
    raw = {interpreters.NORMALIZATION_KEY: False}
    with caplog.at_level("WARNING"):
        (default,) = lit_sig.IntegratedGradients().run([EXAMPLE], lm, None, config={**raw, **steps})
    assert "declares no" not in caplog.text
    (zero,) = run(lit_sig.IntegratedGradients(), lm, [EXAMPLE], **steps)
    np.testing.assert_array_equal(salience(default), salience(zero))
    (eos,) = run(lit_sig.IntegratedGradients(), lm, [EXAMPLE], **steps, **{interpreters.BASELINE_KEY: "eos"})
    assert not np.allclose(salience(eos), salience(zero))
    # A baseline the interpreter was built with is kept, as one in the config is.
    (built,) = lit_sig.IntegratedGradients(baseline="eos", steps=4).run([EXAMPLE], lm, None, config=raw)
    np.testing.assert_array_equal(salience(built), salience(eos))


def test_captum_methods_default_to_the_lms_baseline(lm):
    from lit_sig.lit import captum_bridge  # pylint: disable=import-outside-toplevel

    raw = {interpreters.NORMALIZATION_KEY: False}
    (ablation,) = captum_bridge.CaptumInterpreter("FeatureAblation").run([EXAMPLE], lm, None, config=raw)
    (exact,) = run(
        lit_sig.SequentialIntegratedGradients(), lm, [EXAMPLE], **{interpreters.METHOD_KEY: interpreters.EXACT_METHOD}
    )
    expected = salience(exact)
    np.testing.assert_allclose(salience(ablation), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_token_baselines_are_the_tokenizers_tokens(lm):
    table = lm.model.get_input_embeddings().weight.detach()
    for kind in lm.baseline_kinds()[1:]:
        token_id = getattr(lm.tokenizer, f"{kind}_token_id")
        np.testing.assert_array_equal(lm.baseline_embedding(causal_lm.EMBEDDINGS_FIELD, kind), table[token_id])
