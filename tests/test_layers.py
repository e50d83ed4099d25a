"""Attributions at a layer and for a neuron, against captum called directly on the same model.

BERT- and Llama-style tiny random models (tests.helpers.build). At layer L every position
moves, [CLS]/[SEP] included, from the layer's states for the baseline input (the word
tokens at [MASK]) to its states for the input: captum's `LayerIntegratedGradients`,
`LayerGradientXActivation` and `LayerFeatureAblation` on the block whose output is layer L.
A neuron is explained with the path at the word embeddings, [CLS]/[SEP] fixed:
`NeuronIntegratedGradients`, `NeuronFeatureAblation` and `NeuronGradient` on its block.
"""

import concurrent.futures
import json

import captum.attr
import numpy as np
import pytest
import torch
import transformers
from lit_nlp.lib import caching

import lit_sig
from lit_sig import models
from lit_sig.cli import explain, rows_io
from lit_sig.lit import captum_bridge, config, interpreters, protocol
from lit_sig.models import padding
from tests import helpers
from tests.helpers import COMMON, assert_close_in_float32, build, run, salience

SENTENCE = "not bad at all , really"
SENTENCES = [SENTENCE, "bad", "the acting , costumes , music and sound are all astounding here ."]
LABELS = ["a", "b"]
TARGET = 1  # "b"
STEPS = 16
ARCHS = ["bert", "llama"]
N = COMMON["num_hidden_layers"]


@pytest.fixture(scope="module", params=ARCHS)
def arch(request, tokenizer) -> tuple[str, models.HFSequenceClassifier]:
    return request.param, models.HFSequenceClassifier(build(request.param), tokenizer, labels=LABELS, device="cpu")


def blocks(model) -> torch.nn.ModuleList:
    return model.layer_views.blocks.of(model.model)


def states_of(output) -> torch.Tensor:
    """A block's output states (some blocks return a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def layer_module(name: str, model: models.HFSequenceClassifier, layer: int) -> torch.nn.Module:
    """The module whose output is layer `layer`: the embedding stage (0) or block `layer`."""
    if layer == 0:
        return model.model.base_model.embeddings if name == "bert" else model.model.get_input_embeddings()
    return blocks(model)[layer - 1]


def ids_and_baseline(model: models.HFSequenceClassifier, sentence: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`[1, T + 2]` token ids, and the baseline input's: word tokens at [MASK], [CLS]/[SEP] kept."""
    ids = model.tokenizer(sentence, return_tensors="pt")["input_ids"]
    baseline = ids.clone()
    baseline[0, 1:-1] = model.tokenizer.mask_token_id
    return ids, baseline


def on_ids(model: models.HFSequenceClassifier):
    """F of token ids, the model called as `model(**tokenizer(text))` calls it (with the tokenizer's type ids)."""

    def forward(ids: torch.Tensor) -> torch.Tensor:  # [N, T + 2] -> [N]
        ones = torch.ones_like(ids)
        return model.model(input_ids=ids, attention_mask=ones, token_type_ids=0 * ones).logits[:, TARGET]

    return forward


def on_words(model: models.HFSequenceClassifier, sentence: str):
    """captum's view for a neuron: the word-token embeddings `[1, T, D]`, their [MASK] baseline, a forward."""
    ids, _ = ids_and_baseline(model, sentence)
    table = model.model.get_input_embeddings()
    with torch.no_grad():
        full = table(ids)[0]  # [T + 2, D]
        mask = table(torch.tensor(model.tokenizer.mask_token_id)).expand_as(full[1:-1])

    def forward(words: torch.Tensor) -> torch.Tensor:
        N = len(words)
        embs = torch.cat([full[:1].expand(N, 1, -1), words, full[-1:].expand(N, 1, -1)], 1)
        return model.model(inputs_embeds=embs, attention_mask=torch.ones(embs.shape[:2], dtype=torch.long)).logits

    return full[1:-1][None], mask[None], forward


def direct_score(model: models.HFSequenceClassifier, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float(on_ids(model)(ids)[0])


def layer_config(layer, **extra) -> dict:
    return {interpreters.CLASS_KEY: LABELS[TARGET], interpreters.INTERPOLATION_KEY: STEPS, "Layer": layer, **extra}


def tokens(result: dict) -> list[str]:
    return list(result["token_grad_sentence"].tokens)


def close(ours: np.ndarray, theirs: np.ndarray) -> None:
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * max(1.0, float(np.abs(theirs).max())))


# Layer states and cost.


@pytest.mark.parametrize("name", ["bert", "llama", "gpt2", "distilbert", "deberta-v2", "modernbert", "qwen2"])
def test_layer_states_are_hugging_faces_hidden_states(tokenizer, name):
    """x at layer i < N is HF's hidden_states[i]; at N it is the last block's own output (before a final norm)."""
    model = models.HFSequenceClassifier(build(name), tokenizer, labels=LABELS, device="cpu")
    prepared = model.path_inputs([{"sentence": SENTENCE}], ["b"], ["input_embs_sentence"])
    encoding = tokenizer(SENTENCE, return_tensors="pt")
    last = []
    handle = blocks(model)[-1].register_forward_hook(lambda m, a, out: last.append(states_of(out)))
    with torch.no_grad():
        hidden = model.model(**encoding, output_hidden_states=True).hidden_states
    handle.remove()
    assert model.num_layers() == N == len(hidden) - 1
    for layer in range(N + 1):
        ((key, _),) = model.inside_path_inputs(prepared, None, layer, None)
        expected = hidden[layer][0] if layer < N else last[0][0]
        torch.testing.assert_close(key.x, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
        assert key.tokens == [tokenizer.convert_ids_to_tokens(encoding["input_ids"][0])]


def test_rows_at_a_layer_run_only_the_blocks_above(tokenizer):
    """Rows at layer L call blocks L+1..N once per pass; the blocks below run once, for x and the baseline."""
    model = models.HFSequenceClassifier(build("llama"), tokenizer, labels=LABELS, device="cpu", max_rows_per_pass=8)
    calls = [0] * N
    handles = [
        b.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, b in enumerate(blocks(model))
    ]
    try:
        model.layer_views.view(None, 1), model.layer_views.view(1, None)  # Checked before counting.
        calls[:] = [0] * N
        result = run(lit_sig.IntegratedGradients(), model, [{"sentence": SENTENCE}], **layer_config(1))[0]
    finally:
        for handle in handles:
            handle.remove()
    assert np.isfinite(result[interpreters.COMPLETENESS_KEY])
    # Block 1: the lower pass only (x and the baseline input together); block 2: every row pass (the
    # gradient rows 8 at a time, then the score-only rows of the baseline and x).
    assert calls == [1, -(-STEPS // 8) + 1]


# Layer attributions against captum.


@pytest.mark.parametrize("layer", range(N + 1))
def test_layer_ig_equals_captum_layer_integrated_gradients(arch, layer):
    name, model = arch
    ids, baseline = ids_and_baseline(model, SENTENCE)
    result = run(lit_sig.IntegratedGradients(), model, [{"sentence": SENTENCE}], **layer_config(str(layer)))[0]
    expected = captum.attr.LayerIntegratedGradients(on_ids(model), layer_module(name, model, layer)).attribute(
        ids, baselines=baseline, n_steps=STEPS, method="gausslegendre"
    )
    assert tokens(result) == model.tokenizer.convert_ids_to_tokens(ids[0])  # [CLS] and [SEP] included.
    close(salience(result), expected[0].sum(-1).detach().numpy())


@pytest.mark.parametrize("layer", range(N + 1))
def test_layer_gradient_methods_equal_captum_layer_gradient_x_activation(arch, layer):
    name, model = arch
    ids, _ = ids_and_baseline(model, SENTENCE)
    example = [{"sentence": SENTENCE, "label": LABELS[TARGET]}]
    module = layer_module(name, model, layer)
    x_activation = captum.attr.LayerGradientXActivation(on_ids(model), module).attribute(ids)[0].detach()
    gradient = captum.attr.LayerGradientXActivation(on_ids(model), module, multiply_by_inputs=False).attribute(ids)
    ours = run(lit_sig.GradientDotInput(), model, example, Layer=layer)[0]
    close(salience(ours), x_activation.sum(-1).numpy())
    norm = run(lit_sig.GradientNorm(), model, example, Layer=layer)[0]
    close(salience(norm), gradient[0].detach().norm(dim=-1).numpy())


@pytest.mark.parametrize("layer", range(N + 1))
def test_layer_exact_sig_equals_captum_layer_feature_ablation(arch, layer):
    """Each position's layer state replaced by the baseline input's state there, one at a time."""
    name, model = arch
    ids, baseline = ids_and_baseline(model, SENTENCE)
    module = layer_module(name, model, layer)
    states = []
    handle = module.register_forward_hook(lambda m, a, out: states.append(states_of(out)))
    with torch.no_grad():
        on_ids(model)(baseline)
    handle.remove()
    T = ids.shape[1]
    expected = captum.attr.LayerFeatureAblation(on_ids(model), module).attribute(
        ids, layer_baselines=states[0], layer_mask=torch.arange(T)[None, :, None]
    )
    config = layer_config(layer, **{interpreters.METHOD_KEY: interpreters.EXACT_METHOD})
    result = run(lit_sig.SequentialIntegratedGradients(), model, [{"sentence": SENTENCE}], **config)[0]
    close(salience(result), expected[0, :, 0].detach().numpy())


@pytest.mark.parametrize("layer", range(N + 1))
def test_completeness_holds_at_every_layer(arch, layer):
    """IG at a layer sums to F(input) - F(baseline input) by direct calls; SIG's per-token deltas are small."""
    _, model = arch
    ids, baseline = ids_and_baseline(model, SENTENCE)
    gap = direct_score(model, ids) - direct_score(model, baseline)
    steps = {interpreters.INTERPOLATION_KEY: 64}
    ig = run(lit_sig.IntegratedGradients(), model, [{"sentence": SENTENCE}], **layer_config(layer, **steps))[0]
    delta = ig[interpreters.COMPLETENESS_KEY]
    assert abs(salience(ig).sum() + delta - gap) <= 1e-5 * max(1.0, abs(gap))
    assert abs(delta) <= 1e-3 * max(1.0, abs(gap))
    sig = run(lit_sig.SequentialIntegratedGradients(), model, [{"sentence": SENTENCE}], **layer_config(layer, **steps))[
        0
    ]
    exact = run(
        lit_sig.SequentialIntegratedGradients(),
        model,
        [{"sentence": SENTENCE}],
        **layer_config(layer, **{interpreters.METHOD_KEY: interpreters.EXACT_METHOD}),
    )[0]
    assert exact[interpreters.COMPLETENESS_KEY] == 0.0
    scale = max(1.0, float(np.abs(salience(exact)).max()))
    assert abs(sig[interpreters.COMPLETENESS_KEY]) <= 1e-3 * scale
    np.testing.assert_allclose(salience(sig), salience(exact), rtol=0, atol=1e-3 * scale)


def test_layers_share_passes_across_lengths(arch):
    """Inputs of three lengths in one call (right padding for BERT, left for Llama) equal each alone."""
    _, model = arch
    for interpreter in (lit_sig.IntegratedGradients(), lit_sig.SequentialIntegratedGradients()):
        together = run(interpreter, model, [{"sentence": s} for s in SENTENCES], **layer_config(1))
        for sentence, result in zip(SENTENCES, together):
            alone = run(interpreter, model, [{"sentence": sentence}], **layer_config(1))[0]
            assert tokens(result) == tokens(alone)
            assert_close_in_float32(salience(result), salience(alone))


# Neurons against captum.


def neuron_selector(unit: int, position: int | None):
    if position is not None:
        return (position, unit)
    return lambda out: states_of(out)[..., unit].sum(-1)


@pytest.mark.parametrize("neuron", ["1:3:0", "1:5", "2:7:4", "2:0"])
def test_neuron_ig_equals_captum_neuron_integrated_gradients(arch, neuron):
    name, model = arch
    layer, unit, *position = map(int, neuron.split(":"))
    words, mask, forward = on_words(model, SENTENCE)
    expected = captum.attr.NeuronIntegratedGradients(forward, layer_module(name, model, layer)).attribute(
        words,
        neuron_selector(unit, position[0] if position else None),
        baselines=mask,
        n_steps=STEPS,
        method="gausslegendre",
    )
    config = {interpreters.INTERPOLATION_KEY: STEPS, "Neuron": neuron}
    result = run(lit_sig.IntegratedGradients(), model, [{"sentence": SENTENCE}], **config)[0]
    assert tokens(result) == model.tokenizer.tokenize(SENTENCE)  # The word tokens, as at the embeddings.
    close(salience(result), expected[0].sum(-1).detach().numpy())
    assert abs(result[interpreters.COMPLETENESS_KEY]) <= 1e-3 * max(1.0, np.abs(salience(result)).sum())


@pytest.mark.parametrize("neuron", ["1:3:0", "2:7"])
def test_neuron_exact_sig_and_occlusion_equal_captum_neuron_feature_ablation(arch, neuron):
    name, model = arch
    layer, unit, *position = map(int, neuron.split(":"))
    words, mask, forward = on_words(model, SENTENCE)
    T, D = words.shape[1:]
    expected = (
        captum.attr.NeuronFeatureAblation(forward, layer_module(name, model, layer))
        .attribute(
            words,
            neuron_selector(unit, position[0] if position else None),
            baselines=mask,
            feature_mask=torch.arange(T)[None, :, None].expand(1, T, D),
        )[0, :, 0]
        .detach()
        .numpy()
    )
    exact = {interpreters.METHOD_KEY: interpreters.EXACT_METHOD, "Neuron": neuron}
    close(salience(run(lit_sig.SequentialIntegratedGradients(), model, [{"sentence": SENTENCE}], **exact)[0]), expected)
    bridged = captum_bridge.CaptumInterpreter("FeatureAblation")
    close(salience(run(bridged, model, [{"sentence": SENTENCE}], Neuron=neuron)[0]), expected)


def test_neuron_gradient_x_input_equals_captum_neuron_gradient(arch):
    name, model = arch
    words, _, forward = on_words(model, SENTENCE)
    gradient = captum.attr.NeuronGradient(forward, layer_module(name, model, 2)).attribute(words, (3, 5))
    result = run(lit_sig.GradientDotInput(), model, [{"sentence": SENTENCE}], Neuron="2:5:3")[0]
    close(salience(result), (gradient * words)[0].sum(-1).detach().numpy())


def test_a_neuron_with_a_layer_enters_below_it(arch):
    """Layer 1 and a neuron of layer 2: IG's attributions sum to the neuron's change from the baseline input."""
    name, model = arch
    ids, baseline = ids_and_baseline(model, SENTENCE)
    values = []
    handle = layer_module(name, model, 2).register_forward_hook(lambda m, a, out: values.append(float(out[0, 4, 6])))
    with torch.no_grad():
        on_ids(model)(ids), on_ids(model)(baseline)
    handle.remove()
    result = run(lit_sig.IntegratedGradients(), model, [{"sentence": SENTENCE}], **layer_config(1, Neuron="2:6:4"))[0]
    assert len(salience(result)) == ids.shape[1]
    gap = values[0] - values[1]
    assert abs(salience(result).sum() + result[interpreters.COMPLETENESS_KEY] - gap) <= 1e-5 * max(1.0, abs(gap))


def test_neurons_share_passes_across_lengths(arch):
    _, model = arch
    config = {interpreters.INTERPOLATION_KEY: 8, "Neuron": "2:1:1"}
    together = run(lit_sig.IntegratedGradients(), model, [{"sentence": s} for s in SENTENCES], **config)
    for sentence, result in zip(SENTENCES, together):
        alone = run(lit_sig.IntegratedGradients(), model, [{"sentence": sentence}], **config)[0]
        assert_close_in_float32(salience(result), salience(alone))


# Config, defaults and errors.


@pytest.mark.parametrize(
    "interpreter",
    [
        lit_sig.IntegratedGradients(),
        lit_sig.SequentialIntegratedGradients(),
        lit_sig.GradientNorm(),
        lit_sig.GradientDotInput(),
        captum_bridge.CaptumInterpreter("FeatureAblation"),
    ],
    ids=lambda i: type(i).__name__,
)
def test_layer_embeddings_equals_todays_attributions_exactly(tiny_model, interpreter):
    examples = [{"sentence": s, "label": "1"} for s in SENTENCES]
    today = run(interpreter, tiny_model, examples)
    explicit = run(interpreter, tiny_model, examples, Layer="embeddings", Neuron="")
    for a, b in zip(today, explicit):
        assert list(a["token_grad_sentence"].tokens) == list(b["token_grad_sentence"].tokens)
        np.testing.assert_array_equal(salience(a), salience(b))
        assert a.get(interpreters.COMPLETENESS_KEY) == b.get(interpreters.COMPLETENESS_KEY)


def test_the_keys_are_in_every_lit_sig_interpreters_spec():
    for interpreter in (
        lit_sig.IntegratedGradients(),
        lit_sig.SequentialIntegratedGradients(),
        lit_sig.GradientNorm(),
        lit_sig.GradientDotInput(),
        captum_bridge.CaptumInterpreter("KernelShap"),
    ):
        spec = interpreter.config_spec()
        assert spec["Layer"].default == "embeddings" and spec["Neuron"].default == ""


@pytest.mark.parametrize(
    "value,parsed",
    [("embeddings", None), ("", None), (" Embeddings ", None), ("0", 0), (" 12 ", 12), (3, 3), (None, None)],
)
def test_layer_values(value, parsed):
    assert config.parse_layer(value) == parsed


@pytest.mark.parametrize(
    "value,parsed",
    [("", None), ("1:2", protocol.Neuron(1, 2)), (" 3:4:5 ", protocol.Neuron(3, 4, 5)), (None, None)],
)
def test_neuron_values(value, parsed):
    assert config.parse_neuron(value) == parsed


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("Layer", "x", "'Layer' must be 'embeddings' .* or a layer number"),
        ("Layer", "-1", "'Layer' must be"),
        ("Layer", 1.5, "'Layer' must be"),
        ("Layer", True, "'Layer' must be"),
        ("Layer", "١", "'Layer' must be"),  # An Arabic-Indic digit: not a layer number.
        ("Neuron", "3", r"'Neuron' must be empty \(off\), 'L:U'"),
        ("Neuron", "1:2:3:4", "'Neuron' must be"),
        ("Neuron", "a:b", "'Neuron' must be"),
        ("Neuron", 5, "'Neuron' must be"),
    ],
)
def test_bad_values_are_refused_before_any_pass(tiny_model, key, value, message):
    for interpreter in (lit_sig.IntegratedGradients(), lit_sig.GradientNorm(), captum_bridge.CaptumInterpreter("Lime")):
        with pytest.raises(ValueError, match=message):
            interpreter.run([{"sentence": "good"}], tiny_model, None, config={key: value})


@pytest.mark.parametrize(
    "settings,message",
    [
        (
            {"Layer": "3"},
            r"Layer 3 doesn't exist: BertForSequenceClassification has layers 0\.\.2 .*accepted Layer:"
            r" embeddings, 0\.\.2",
        ),
        ({"Neuron": "4:1"}, r"Neuron '4:1': layer 4 doesn't exist.*layers 0\.\.2"),
        ({"Neuron": "1:32"}, r"unit 32 doesn't exist; layer 1 has units 0\.\.31"),
        ({"Neuron": "1:0:9"}, r"position 9 is past input 0's 3 tokens; accepted positions: 0\.\.2"),
        (
            {"Layer": "2", "Neuron": "2:0"},
            r"rows must enter below the neuron's layer; accepted Layer: embeddings, 0\.\.1",
        ),
    ],
)
def test_layers_units_and_positions_that_do_not_exist_are_refused(tiny_model, settings, message):
    for interpreter in (lit_sig.SequentialIntegratedGradients(), lit_sig.GradientDotInput()):
        with pytest.raises(ValueError, match=message):
            interpreter.run([{"sentence": "good"}], tiny_model, None, config=settings)


def test_a_model_without_one_list_of_blocks_explains_at_the_embeddings_only(tokenizer):
    """ALBERT shares one layer across its depth: no module list of its layers; Layer 1 is refused by name."""
    model = models.HFSequenceClassifier(build("albert"), tokenizer, labels=LABELS, device="cpu")
    assert model.num_layers() is None
    with pytest.raises(
        ValueError, match="Layer 1: AlbertForSequenceClassification has no module lists .*only Layer 'embeddings'"
    ):
        run(lit_sig.IntegratedGradients(), model, [{"sentence": SENTENCE}], Layer=1)
    assert np.isfinite(salience(run(lit_sig.IntegratedGradients(), model, [{"sentence": SENTENCE}])[0])).all()


def test_a_layer_whose_view_is_not_the_model_is_refused(tokenizer):
    """DeBERTa's convolution after its first block reads the embedding output: layers 0 and 1 can't be
    entered (checked on a test batch at first use), layer 2 can."""
    torch.manual_seed(0)
    module = transformers.DebertaV2ForSequenceClassification(transformers.DebertaV2Config(**COMMON, conv_kernel_size=3))
    model = models.HFSequenceClassifier(module.eval(), tokenizer, labels=LABELS, device="cpu")
    for layer in (0, 1):
        with pytest.raises(
            ValueError,
            match=f"Layer {layer}: a pass that starts there does not give the model's own"
            r" logits.*layers of this model: 0\.\.2",
        ):
            run(lit_sig.IntegratedGradients(), model, [{"sentence": SENTENCE}], Layer=layer)
    result = run(lit_sig.IntegratedGradients(), model, [{"sentence": SENTENCE}], **layer_config(2))[0]
    assert abs(result[interpreters.COMPLETENESS_KEY]) < 1e-3


def test_found_through_lits_caching_wrapper(tiny_model):
    wrapped = caching.CachingModelWrapper(tiny_model, "tiny")
    for interpreter in (lit_sig.IntegratedGradients(), lit_sig.GradientNorm()):
        config = {"Layer": "1", "Neuron": "2:3"}
        direct = run(interpreter, tiny_model, [{"sentence": SENTENCE}], **config)[0]
        through = run(interpreter, wrapped, [{"sentence": SENTENCE}], **config)[0]
        np.testing.assert_array_equal(salience(direct), salience(through))


def test_a_sentence_pair_splits_its_positions_over_the_fields(tiny_pair_model):
    example = {"sentence1": "a man sleeps", "sentence2": "nobody sleeps"}
    result = run(lit_sig.IntegratedGradients(), tiny_pair_model, [example], Layer=1, **{"Class to explain": "neutral"})[
        0
    ]
    assert list(result["token_grad_sentence1"].tokens) == ["[CLS]", "a", "man", "sleeps", "[SEP]"]
    assert list(result["token_grad_sentence2"].tokens) == ["nobody", "sleeps", "[SEP]"]
    assert abs(result[interpreters.COMPLETENESS_KEY]) < 1e-3


def test_a_model_without_the_device_path_is_told_what_it_accepts(tiny_model):
    class PredictOnly:
        def __init__(self, model):
            self._model = model

        def __getattr__(self, name):
            if name in ("path_inputs", "inside_path_inputs", "score_rows", "rows_per_pass", "forward_rows"):
                raise AttributeError(name)
            return getattr(self._model, name)

    with pytest.raises(
        ValueError,
        match="Layer and Neuron need a model that explains inside itself.*accepted: Layer"
        " 'embeddings' and an empty Neuron",
    ):
        run(lit_sig.IntegratedGradients(), PredictOnly(tiny_model), [{"sentence": SENTENCE}], Layer=1)
    # The default path still works for it.
    assert len(run(lit_sig.IntegratedGradients(), PredictOnly(tiny_model), [{"sentence": SENTENCE}])) == 1


# The layer sweep and its figure.


def test_a_layer_sweep_is_one_run_per_layer(tiny_model):
    example = {"sentence": SENTENCE}
    sweep = lit_sig.layer_sweep(tiny_model, example)
    exact = {interpreters.METHOD_KEY: interpreters.EXACT_METHOD}
    words = tiny_model.tokenizer.tokenize(SENTENCE)
    assert sweep.layers == ["embeddings", "0", "1", "2"]
    assert sweep.tokens == ["[CLS]", *words, "[SEP]"] and sweep.salience.shape == (4, len(words) + 2)
    today = salience(run(lit_sig.SequentialIntegratedGradients(), tiny_model, [example], **exact)[0])
    np.testing.assert_array_equal(sweep.salience[0], [0.0, *today, 0.0])  # [CLS]/[SEP] don't move there.
    for row, layer in zip(sweep.salience[1:], range(3)):
        at_layer = run(lit_sig.SequentialIntegratedGradients(), tiny_model, [example], Layer=layer, **exact)[0]
        np.testing.assert_array_equal(row, salience(at_layer))
    assert sweep.completeness_deltas == [0.0] * 4
    ig = lit_sig.layer_sweep(tiny_model, example, lit_sig.IntegratedGradients(), {"Interpolation steps": 32}, [2])
    assert ig.layers == ["embeddings", "2"]
    gap = [row.sum() + delta for row, delta in zip(ig.salience, ig.completeness_deltas)]
    assert abs(gap[0] - gap[1]) <= 1e-5  # Both rows sum to F(input) - F(baseline input).
    figure = sweep.plot(title="t")
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == sweep.layers
    assert [t.get_text() for t in ax.get_xticklabels()] == sweep.tokens


def test_plot_layers_scales_and_validates():
    tokens, layers = ["a", "b"], ["embeddings", "0"]
    figure = lit_sig.plot_layers(tokens, layers, [[1.0, -2.0], [0.5, 0.0]])
    image = figure.axes[0].images[0].get_array()
    np.testing.assert_allclose(image, [[0.5, -1.0], [0.25, 0.0]])  # One scale for the figure.
    by_layer = lit_sig.plot_layers(tokens, layers, [[1.0, -2.0], [0.5, 0.0]], scale="layer").axes[0].images[0]
    np.testing.assert_allclose(by_layer.get_array(), [[0.5, -1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"shape \(2, 3\); expected \(2, 2\)"):
        lit_sig.plot_layers(tokens, layers, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        lit_sig.plot_layers(tokens, layers, [[np.nan, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="accepted: 'all', 'layer'"):
        lit_sig.plot_layers(tokens, layers, np.zeros((2, 2)), scale="row")


def test_a_layer_sweep_needs_a_model_with_layers(tokenizer):
    model = models.HFSequenceClassifier(build("albert"), tokenizer, labels=LABELS, device="cpu")
    with pytest.raises(ValueError, match="Layer 0: AlbertForSequenceClassification has no module lists"):
        lit_sig.layer_sweep(model, {"sentence": SENTENCE})


# Causal LMs: F is the target's log-probability; rows at a layer stop at the last target's prefix.


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request) -> models.HFCausalLM:
    tokenizer = helpers.tiny_lm_tokenizer(bos=request.param == "llama", chat=False)
    make = helpers.tiny_llama if request.param == "llama" else helpers.tiny_gpt2
    return models.HFCausalLM(make(tokenizer, 0), tokenizer, device="cpu")


LM_EXAMPLE = {"prompt": "The capital of France is", "target": " Paris."}
LM_RAW = {interpreters.NORMALIZATION_KEY: False, interpreters.BASELINE_KEY: "zero", interpreters.INTERPOLATION_KEY: 16}


def lm_reference(lm: models.HFCausalLM):
    """The sequence's embeddings `[1, L, D]`, its zero baseline (special tokens kept), and F by direct calls."""
    tok = lm.tokenizer
    prompt = tok(LM_EXAMPLE["prompt"])["input_ids"]
    ids = torch.tensor(prompt + tok(LM_EXAMPLE["target"], add_special_tokens=False)["input_ids"])[None]  # [1, L]
    targets = torch.arange(len(prompt), ids.shape[1])
    with torch.no_grad():
        x = lm.model.get_input_embeddings()(ids)
    baseline = x.clone()
    baseline[0, [i not in tok.all_special_ids for i in ids[0].tolist()]] = 0.0

    def score(embs: torch.Tensor) -> torch.Tensor:  # [N, L, D] -> [N]
        log_probs = torch.log_softmax(lm.model(inputs_embeds=embs).logits.float(), -1)[:, targets - 1]
        return log_probs.gather(-1, ids[:, targets].expand(len(embs), -1)[..., None])[..., 0].sum(-1)

    return x, baseline, score


def lm_salience(result: dict) -> np.ndarray:
    return np.asarray(result[models.causal_lm.GRADIENTS_FIELD].salience, dtype=np.float64)


@pytest.mark.parametrize("layer", [1, 2])
def test_causal_lm_layer_ig_equals_captum_layer_integrated_gradients(lm, layer):
    x, baseline, score = lm_reference(lm)
    expected = (
        captum.attr.LayerIntegratedGradients(score, blocks(lm)[layer - 1])
        .attribute(x, baselines=baseline, n_steps=STEPS, method="gausslegendre")[0]
        .sum(-1)
    )
    result = lit_sig.IntegratedGradients().run([LM_EXAMPLE], lm, None, config={**LM_RAW, "Layer": layer})[0]
    close(lm_salience(result), expected.detach().numpy())
    assert abs(result[interpreters.COMPLETENESS_KEY]) <= 1e-4


def test_causal_lm_neuron_exact_sig_equals_captum_neuron_feature_ablation(lm):
    x, baseline, score = lm_reference(lm)
    T, D = x.shape[1:]
    expected = captum.attr.NeuronFeatureAblation(score, blocks(lm)[1]).attribute(
        x, (3, 5), baselines=baseline, feature_mask=torch.arange(T)[None, :, None].expand(1, T, D)
    )[0, :, 0]
    config = {**LM_RAW, "Neuron": "2:5:3", interpreters.METHOD_KEY: interpreters.EXACT_METHOD}
    result = lit_sig.SequentialIntegratedGradients().run([LM_EXAMPLE], lm, None, config=config)[0]
    close(lm_salience(result), expected.detach().numpy())
    assert np.all(lm_salience(result)[4:] == 0.0)  # A neuron at position 3 sees nothing after it.


# The explain CLI.


def explain_cli(tmp_path, tiny_model_dir, out, *flags) -> list[dict]:
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t1\n" for s in SENTENCES))
    explain.main(["--data", str(data), "--model", str(tiny_model_dir), "--out", str(out), *flags])
    return rows_io.read_rows(out)


def test_the_explain_cli_takes_a_layer_and_a_neuron_and_records_them(tmp_path, tiny_model_dir, tiny_model, capsys):
    rows = explain_cli(tmp_path, tiny_model_dir, tmp_path / "l.jsonl", "--method", "exact_sig", "--layer", "01")
    exact = {interpreters.METHOD_KEY: interpreters.EXACT_METHOD, "Layer": 1}
    for row in rows:
        assert (row["layer"], row["neuron"]) == ("1", "")
        example = {"sentence": row["sentence"], "label": row["predicted"]}
        notebook = run(lit_sig.SequentialIntegratedGradients(), tiny_model, [example], **exact)[0]
        assert row["tokens"] == tokens(notebook) and row["tokens"][0] == "[CLS]"
        assert_close_in_float32(np.array(row["salience"]), salience(notebook))
    rows = explain_cli(tmp_path, tiny_model_dir, tmp_path / "n.parquet", "--method", "ig", "--neuron", " 2:3 ")
    assert {(r["layer"], r["neuron"]) for r in rows} == {("embeddings", "2:3")}
    with pytest.raises(SystemExit) as exit_info:  # Rows of another layer must not join these.
        explain_cli(
            tmp_path, tiny_model_dir, tmp_path / "n.parquet", "--method", "ig", "--neuron", "2:3", "--layer", "1"
        )
    assert exit_info.value.code == 2 and "layer='embeddings' (this run: '1')" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags,message",
    [
        (("--layer", "top"), "--layer 'top' / --neuron '': 'Layer' must be 'embeddings'"),
        (("--neuron", "2"), "'Neuron' must be empty"),
        (("--layer", "7"), r"Layer 7 doesn't exist: BertForSequenceClassification has layers 0..2"),
    ],
)
def test_the_explain_cli_refuses_bad_layers_and_neurons(tmp_path, tiny_model_dir, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        explain_cli(tmp_path, tiny_model_dir, tmp_path / "bad.jsonl", *flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "bad.jsonl").exists()


def test_rows_written_before_the_layer_setting_resume_as_embeddings(tmp_path, tiny_model_dir):
    out = tmp_path / "old.jsonl"
    rows = explain_cli(tmp_path, tiny_model_dir, out, "--method", "ig", "--steps", "2", "--limit", "2")
    out.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k not in ("layer", "neuron")}) + "\n" for r in rows)
    )
    assert len(explain_cli(tmp_path, tiny_model_dir, out, "--method", "ig", "--steps", "2")) == len(SENTENCES)


def test_the_speed_benchmark_has_layer_rows(tmp_path):
    """`benchmarks.speed` times IG and exact SIG at a layer against the floor of the same rows (tiny model)."""
    from benchmarks import speed  # pylint: disable=import-outside-toplevel

    out, T, n = tmp_path / "speed.json", 4, 3
    flags = ["--shape", "tiny", "--tokens", str(T), "--steps", str(n), "--methods", "ig", "--layers", "mid,last,1"]
    speed.main([*flags, "--memory_tokens", "0", "--repeats", "1", "--device", "cpu", "--json", str(out)])
    cases = json.loads(out.read_text())["layer_cases"]
    assert [(c["method"], c["layer"]) for c in cases] == [("ig", 1), ("exact_sig", 1)]  # N = 2: mid = last = 1.
    ig, exact = cases
    assert (ig["rows"], ig["forward_rows"]) == (n, 2)  # The baseline's and x's scores.
    assert (exact["rows"], exact["forward_rows"]) == (0, T + 2 + 1)  # Every position, [CLS]/[SEP] too, and x.
    for case in cases:
        assert case["expected_fraction"] == 0.5 and case["ratio"] > 0 and case["fraction"] > 0
    with pytest.raises(SystemExit):
        speed.main(["--shape", "tiny", "--layers", "top", "--memory_tokens", "0"])


# Passes that can't mix lengths, half precision, threads.


def test_layers_where_passes_hold_one_length(tokenizer, monkeypatch):
    """A head no padding fixes runs one length per pass, the layers below included; results equal each alone."""
    monkeypatch.setattr(padding, "_padded_logits", lambda *args: None)
    model = models.HFSequenceClassifier(build("gpt2"), tokenizer, labels=LABELS, device="cpu")
    assert model.padding == padding.UNMIXED
    together = run(lit_sig.IntegratedGradients(), model, [{"sentence": s} for s in SENTENCES], **layer_config(1))
    for sentence, result in zip(SENTENCES, together):
        ids, baseline = ids_and_baseline(model, sentence)
        expected = captum.attr.LayerIntegratedGradients(on_ids(model), blocks(model)[0]).attribute(
            ids, baselines=baseline, n_steps=STEPS, method="gausslegendre"
        )
        close(salience(result), expected[0].sum(-1).detach().numpy())


def test_a_layer_in_bfloat16_is_float32_within_bfloat16s_precision(tokenizer):
    module = build("bert")
    exact = {interpreters.METHOD_KEY: interpreters.EXACT_METHOD}
    results = {}
    for precision in ("float32", "bfloat16"):
        model = models.HFSequenceClassifier(module, tokenizer, labels=LABELS, device="cpu", precision=precision)
        ig = run(lit_sig.IntegratedGradients(), model, [{"sentence": SENTENCE}], **layer_config(1))[0]
        sig = run(lit_sig.SequentialIntegratedGradients(), model, [{"sentence": SENTENCE}], **layer_config(1, **exact))
        results[precision] = salience(ig), salience(sig[0])
    for ours, theirs in zip(results["bfloat16"], results["float32"]):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=2**-4 * np.abs(theirs).max())
    np.testing.assert_array_equal(results["bfloat16"][1], results["float32"][1])  # Score-only rows run in float32.


def test_threads_explaining_at_different_layers_share_one_model(tiny_model):
    configs = [layer_config(layer, **{interpreters.CLASS_KEY: "1"}) for layer in (0, 1, 2, "embeddings")]
    configs.append({**configs[0], "Neuron": "1:3"})
    serial = [
        salience(run(lit_sig.IntegratedGradients(), tiny_model, [{"sentence": SENTENCE}], **c)[0]) for c in configs
    ]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(run, lit_sig.IntegratedGradients(), tiny_model, [{"sentence": SENTENCE}], **c)
            for c in configs * 2
        ]
        threaded = [salience(f.result()[0]) for f in futures]
    for ours, theirs in zip(threaded, serial * 2):
        assert_close_in_float32(ours, theirs)


def test_adaptive_sig_at_a_layer_reaches_exact_sig(tiny_model):
    """Adaptive steps refine each position's path at the layer until its delta is under the tolerance."""
    example = [{"sentence": SENTENCE}]
    base = {interpreters.CLASS_KEY: "1", "Layer": 1}
    adaptive = run(lit_sig.SequentialIntegratedGradients(), tiny_model, example, **base, **{"Adaptive steps": True})[0]
    exact = {interpreters.METHOD_KEY: interpreters.EXACT_METHOD}
    closed = run(lit_sig.SequentialIntegratedGradients(), tiny_model, example, **base, **exact)[0]
    assert adaptive[interpreters.TOLERANCE_MET_KEY] and tokens(adaptive) == tokens(closed)
    tolerance = config.PathSettings().tolerance
    np.testing.assert_allclose(salience(adaptive), salience(closed), rtol=0, atol=tolerance + 2e-6)
