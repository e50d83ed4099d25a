"""captum methods bridged into LIT: each equals a direct captum call on an independent forward function."""

import captum.attr
import numpy as np
import pytest
import torch

import lit_sig
from lit_sig import models
from lit_sig.lit import captum_bridge, interpreters
from tests.helpers import SENTENCE, assert_close_in_float32, salience

RAW = {interpreters.NORMALIZATION_KEY: False, interpreters.CLASS_KEY: "1"}
TARGET = 1


def direct(model, text: str = SENTENCE):
    """`(forward [N, T, D] -> [N], word embeddings [1, T, D], [MASK] baseline [1, T, D])` by hand."""
    encoding = model.tokenizer(text, return_tensors="pt")
    table = model.model.get_input_embeddings()
    with torch.no_grad():
        full = table(encoding["input_ids"])[0]  # [T + 2, D]
    words = full[1:-1]

    def forward(word_embs: torch.Tensor) -> torch.Tensor:
        N = word_embs.shape[0]
        embs = torch.cat([full[:1].expand(N, 1, -1), word_embs, full[-1:].expand(N, 1, -1)], dim=1)
        ones = torch.ones(embs.shape[:2], dtype=torch.long)
        return model.model(inputs_embeds=embs, attention_mask=ones, token_type_ids=0 * ones).logits[:, TARGET]

    baseline = table.weight[model.tokenizer.mask_token_id].detach().expand_as(words)
    return forward, words[None], baseline[None]


def seeded(seed: int, call):
    torch.manual_seed(seed)
    np.random.seed(seed)
    return call()


def bridged(model, name: str, **config) -> np.ndarray:
    return salience(
        captum_bridge.CaptumInterpreter(name).run([{"sentence": SENTENCE}], model, None, config={**RAW, **config})[0]
    )


def references(model) -> dict[str, tuple[dict, np.ndarray]]:
    """Per method: (its config, captum's own result on the direct forward), as token salience."""
    forward, x, b = direct(model)
    T, D = x.shape[1:]
    mask = torch.arange(T)[None, :, None].expand(1, T, D)
    rows = model.rows_per_pass(T, True)
    per_dim = lambda a: a[0].sum(-1).detach().numpy()  # noqa: E731
    per_token = lambda a: a[0, :, 0].detach().numpy()  # noqa: E731
    return {
        "Saliency": ({"abs": False}, per_dim(captum.attr.Saliency(forward).attribute(x, abs=False))),
        "InputXGradient": ({}, per_dim(captum.attr.InputXGradient(forward).attribute(x))),
        "GradientShap": (
            {"n_samples": 7, "stdevs": 0.05, "seed": 3},
            per_dim(
                seeded(3, lambda: captum.attr.GradientShap(forward).attribute(x, baselines=b, n_samples=7, stdevs=0.05))
            ),
        ),
        "NoiseTunnel IG": (
            {"nt_samples": 3, "stdevs": 0.02, "n_steps": 10, "seed": 4},
            per_dim(
                seeded(
                    4,
                    lambda: captum.attr.NoiseTunnel(captum.attr.IntegratedGradients(forward)).attribute(
                        x,
                        nt_type="smoothgrad",
                        nt_samples=3,
                        nt_samples_batch_size=1,
                        stdevs=0.02,
                        baselines=b,
                        n_steps=10,
                        internal_batch_size=rows,
                    ),
                )
            ),
        ),
        "FeatureAblation": (
            {},
            per_token(
                captum.attr.FeatureAblation(forward).attribute(
                    x, baselines=b, feature_mask=mask, perturbations_per_eval=rows
                )
            ),
        ),
        "Occlusion": (
            {"sliding_window_shapes": 2},
            per_token(
                captum.attr.Occlusion(forward).attribute(
                    x, sliding_window_shapes=(2, D), strides=(1, D), baselines=b, perturbations_per_eval=rows
                )
            ),
        ),
        "KernelShap": (
            {"n_samples": 40, "seed": 5},
            per_token(
                seeded(
                    5,
                    lambda: captum.attr.KernelShap(forward).attribute(
                        x, baselines=b, feature_mask=mask, n_samples=40, perturbations_per_eval=rows
                    ),
                )
            ),
        ),
        "Lime": (
            {"n_samples": 40, "seed": 6},
            per_token(
                seeded(
                    6,
                    lambda: captum.attr.Lime(forward).attribute(
                        x, baselines=b, feature_mask=mask, n_samples=40, perturbations_per_eval=rows
                    ),
                )
            ),
        ),
    }


@pytest.fixture(scope="module")
def full_sst2():
    """The embedded model, its passes through the full model: the bridge's arithmetic is captum's.

    (Its trimmed last layer equals the full model up to float32 rounding: tests/test_first_token.py.
    Saliency's sum over the embedding is that rounding: LayerNorm's input gradient sums to 0.)
    """
    return models.minilm_sst2("cpu", trim_last_layer=False)


@pytest.fixture(scope="module")
def captum_results(full_sst2):
    return references(full_sst2)


@pytest.mark.parametrize("name", [m for m in captum_bridge.METHODS if m != "NoiseTunnel SIG"])
def test_bridged_method_equals_captum_called_directly(full_sst2, captum_results, name):
    config, theirs = captum_results[name]
    ours = bridged(full_sst2, name, **config)
    assert_close_in_float32(ours, theirs, max(np.abs(theirs).max(), 1e-3))  # captum batches its rows itself.
    assert np.abs(theirs).max() > 0


@pytest.mark.parametrize("name", ["InputXGradient", "FeatureAblation", "NoiseTunnel IG"])
def test_bridge_through_the_trimmed_last_layer_equals_captum_to_rounding(sst2, captum_results, name):
    """What users get (the first-token last layer) against captum on the full model: float32 rounding."""
    assert sst2.trimmed
    config, theirs = captum_results[name]
    ours = bridged(sst2, name, **config)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())


def test_noise_tunnel_sig_without_noise_is_time_interpret_sig(sst2):
    """The SIG inside the tunnel equals time-interpret's; with noise it averages over noisy inputs."""
    tint_attr = pytest.importorskip("tint.attr")
    forward, x, b = direct(sst2)
    theirs = (
        tint_attr.SequentialIntegratedGradients(forward)
        .attribute(x, baselines=b, n_steps=8)[0]
        .sum(-1)
        .detach()
        .numpy()
    )
    quiet = bridged(sst2, "NoiseTunnel SIG", nt_samples=2, stdevs=0.0, n_steps=8)
    np.testing.assert_allclose(quiet, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())
    noisy = bridged(sst2, "NoiseTunnel SIG", nt_samples=2, stdevs=0.05, n_steps=8, seed=1)
    np.testing.assert_array_equal(bridged(sst2, "NoiseTunnel SIG", nt_samples=2, stdevs=0.05, n_steps=8, seed=1), noisy)
    assert np.abs(noisy - quiet).max() > 1e-4


def test_input_x_gradient_equals_our_gradient_x_input(tiny_model):
    ours = salience(
        lit_sig.GradientDotInput().run(
            [{"sentence": SENTENCE, "label": "1"}], tiny_model, None, config={interpreters.NORMALIZATION_KEY: False}
        )[0]
    )
    assert_close_in_float32(bridged(tiny_model, "InputXGradient"), ours)  # Its own pass, not predict's.


def test_feature_ablation_is_exact_sig(minilm_model):
    """Single-token occlusion is SIG's token salience in closed form."""
    exact = salience(
        lit_sig.SequentialIntegratedGradients().run(
            [{"sentence": SENTENCE}], minilm_model, None, config={**RAW, interpreters.METHOD_KEY: "exact"}
        )[0]
    )
    np.testing.assert_allclose(bridged(minilm_model, "FeatureAblation"), exact, rtol=1e-5, atol=1e-6)


def test_sampled_methods_are_reproducible_and_depend_on_the_seed(tiny_model):
    first = bridged(tiny_model, "KernelShap", n_samples=30, seed=1)
    np.testing.assert_array_equal(bridged(tiny_model, "KernelShap", n_samples=30, seed=1), first)
    assert not np.array_equal(bridged(tiny_model, "KernelShap", n_samples=30, seed=2), first)


@pytest.mark.parametrize(
    "name, config, message",
    [
        ("KernelShap", {"n_samples": 0}, "n_samples"),
        ("KernelShap", {"n_samples": "many"}, "n_samples"),
        ("NoiseTunnel IG", {"nt_type": "loud"}, "nt_type"),
        ("GradientShap", {"stdevs": -1}, "stdevs"),
        ("Saliency", {"n_steps": 5}, "Unknown config key"),
        ("Lime", {interpreters.BASELINE_KEY: "random"}, "Baseline"),
    ],
)
def test_bad_config_raises(tiny_model, name, config, message):
    with pytest.raises(ValueError, match=message):
        captum_bridge.CaptumInterpreter(name).run([{"sentence": SENTENCE}], tiny_model, None, config=config)


def test_config_spec_uses_lit_and_captum_names():
    spec = captum_bridge.CaptumInterpreter("NoiseTunnel IG").config_spec()
    assert {interpreters.CLASS_KEY, interpreters.BASELINE_KEY, interpreters.NORMALIZATION_KEY} <= set(spec)
    assert {"nt_type", "nt_samples", "stdevs", "n_steps", "seed"} <= set(spec)
    with pytest.raises(ValueError, match="Unknown captum method"):
        captum_bridge.CaptumInterpreter("DeepLift")


def test_kernel_shap_of_a_single_token_is_its_occlusion(tiny_model):
    """One feature: its Shapley value is F(x) - F(baseline) (captum's sampler can't draw coalitions)."""
    example = [{"sentence": "bad"}]
    shap = captum_bridge.CaptumInterpreter("KernelShap").run(example, tiny_model, None, config=RAW)[0]
    exact = lit_sig.SequentialIntegratedGradients().run(
        example, tiny_model, None, config={**RAW, interpreters.METHOD_KEY: "exact"}
    )[0]
    np.testing.assert_allclose(salience(shap), salience(exact), rtol=1e-5, atol=1e-8)
    assert len(salience(shap)) == 1 and salience(shap)[0] != 0


def test_a_classifier_takes_the_unk_baseline(tiny_model):
    """The token baselines an LM has are open to classifiers too ([UNK] for BERT)."""
    embedding = tiny_model.baseline_embedding("input_embs_sentence", "unk")
    table = tiny_model.model.get_input_embeddings().weight
    np.testing.assert_array_equal(embedding, table[tiny_model.tokenizer.unk_token_id].detach().numpy())
    assert tiny_model.baseline_embedding("input_embs_sentence", "eos") is None  # BERT has no EOS.
