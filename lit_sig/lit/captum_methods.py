"""captum's attribution methods, each with its settings, its cost in model rows and how it is
called on the forward function of word-embedding rows (`Target`); the interpreter that serves
them in LIT is `lit_sig.lit.captum_bridge`.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import captum.attr
import numpy as np
import torch

from lit_sig.core import attribution, engine, quadrature
from lit_sig.lit.config import Param

ForwardFn = Callable[[torch.Tensor], torch.Tensor]  # [N, T, D] -> [N]
SEED_KEY = "seed"


@dataclasses.dataclass(frozen=True)
class Target:
    """What one attribution call gets: the forward function, the input and its baseline."""

    forward: ForwardFn
    x: torch.Tensor  # [1, T, D] word-token embeddings, on the device
    baseline: torch.Tensor  # [1, T, D]
    feature_mask: torch.Tensor  # [1, T, D] long: the token index of every element
    rows_per_pass: int  # Rows captum should put in one forward call.


@dataclasses.dataclass(frozen=True)
class CaptumMethod:
    """A captum method, its parameters, and how its attributions become token salience.

    `cost(settings)` gives the model rows an input of T tokens costs (T x per token + per input);
    `attribute(target, settings)` returns `[1, T, D]` attributions.
    """

    name: str
    description: str
    params: tuple[Param, ...]
    cost: Callable[[dict[str, Any]], tuple[int, int]]  # settings -> model rows (per token, per input)
    attribute: Callable[[Target, dict[str, Any]], torch.Tensor]
    per_token: bool = False  # One feature per token: salience = the feature's attribution.
    sampled: bool = False  # Draws random numbers: seeded, one at a time.
    signed: bool = True


def _seed_param() -> Param:
    return Param(SEED_KEY, 0, 0, 2**31 - 1)


class _ForwardScorer:
    """`engine.RowScorer` over a forward function: rows of one pass -> scores and their gradients."""

    def __init__(self, forward_func: ForwardFn, rows_per_pass: int, device: torch.device):
        self._forward, self._rows, self.device = forward_func, rows_per_pass, device

    def rows_per_pass(self, num_tokens: int, with_grads: bool) -> int:
        del num_tokens, with_grads
        return self._rows

    def score_rows(
        self, pieces: list[tuple[None, torch.Tensor]], with_grads: bool
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        rows = torch.cat([r for _, r in pieces]).detach().requires_grad_(with_grads)  # [R, T, D]
        with torch.enable_grad() if with_grads else torch.no_grad():
            scores = self._forward(rows)  # [R]
            grads = torch.autograd.grad(scores.sum(), rows)[0] if with_grads else None
        bounds = np.cumsum([0] + [len(r) for _, r in pieces])
        return [(scores[a:b].detach(), None if grads is None else grads[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


class _TokenSIG(captum.attr.GradientAttribution):
    """SIG as a captum attribution (for `NoiseTunnel`): lit_sig's path engine on a forward function."""

    def __init__(self, forward_func: ForwardFn, rows_per_pass: int):
        super().__init__(forward_func)
        self._rows = rows_per_pass

    @functools.wraps(lambda self, inputs, **kwargs: None)
    def attribute(self, inputs: torch.Tensor, baselines: torch.Tensor, n_steps: int = 50) -> torch.Tensor:
        """`[B, T, D]` SIG attributions of `inputs` from `baselines` (`[1 or B, T, D]`)."""
        if isinstance(baselines, tuple):  # NoiseTunnel passes captum's formatted (tuple) baselines.
            (baselines,) = baselines
        baselines = baselines.expand_as(inputs)  # [B, T, D]
        alphas, weights = quadrature.quadrature("gausslegendre", n_steps)
        scorer = _ForwardScorer(self.forward_func, self._rows, inputs.device)
        groups = attribution.sig_groups(torch.ones(inputs.shape[1], dtype=torch.bool, device=inputs.device))
        problems = [engine.PathProblem(None, x, b, groups) for x, b in zip(inputs, baselines)]
        results = engine.path_attributions(
            problems, scorer, alphas, weights, measure_completeness=False, keep_dimensions=True
        )
        return torch.stack([r.attributions for r in results]).to(inputs.device)


_TokenSIG.attribute.__wrapped__ = _TokenSIG.attribute  # NoiseTunnel calls `attribute.__wrapped__`.


def _noise_tunnel_params() -> tuple[Param, ...]:
    return (
        Param("nt_type", "smoothgrad", choices=("smoothgrad", "smoothgrad_sq", "vargrad")),
        Param("nt_samples", 5, 1, 100),
        Param("stdevs", 0.01, 0.0, 10.0),
        Param("n_steps", 50, 1, 500),
        _seed_param(),
    )


def _noise_tunnel(method: captum.attr.Attribution, t: Target, s: dict[str, Any], **kwargs) -> torch.Tensor:
    return captum.attr.NoiseTunnel(method).attribute(
        t.x,
        nt_type=s["nt_type"],
        nt_samples=s["nt_samples"],
        nt_samples_batch_size=1,
        stdevs=s["stdevs"],
        baselines=t.baseline,
        n_steps=s["n_steps"],
        **kwargs,
    )


def _surrogate(method: type[captum.attr.Attribution]) -> Callable[[Target, dict[str, Any]], torch.Tensor]:
    """KernelShap and Lime: a model fit on `n_samples` random subsets of the tokens at the baseline."""
    return lambda t, s: method(t.forward).attribute(
        t.x,
        baselines=t.baseline,
        feature_mask=t.feature_mask,
        n_samples=s["n_samples"],
        perturbations_per_eval=t.rows_per_pass,
    )


def _occlusion(t: Target, window: int) -> torch.Tensor:
    """captum's Occlusion with windows of `window` tokens; ValueError for a window wider than the input."""
    if window > t.x.shape[1]:
        raise ValueError(f"'sliding_window_shapes' is {window}, wider than this input's {t.x.shape[1]} word tokens.")
    return captum.attr.Occlusion(t.forward).attribute(
        t.x,
        sliding_window_shapes=(window, t.x.shape[-1]),
        strides=(1, t.x.shape[-1]),
        baselines=t.baseline,
        perturbations_per_eval=t.rows_per_pass,
    )


METHODS: dict[str, CaptumMethod] = {
    m.name: m
    for m in (
        CaptumMethod(
            "Saliency",
            "|gradient| (abs) or the gradient, summed over the embedding: 1 backward pass.",
            (Param("abs", True),),
            lambda s: (0, 1),
            lambda t, s: captum.attr.Saliency(t.forward).attribute(t.x, abs=s["abs"]),
        ),
        CaptumMethod(
            "InputXGradient",
            "gradient x input, summed over the embedding (= lit_sig Gradient x Input).",
            (),
            lambda s: (0, 1),
            lambda t, s: captum.attr.InputXGradient(t.forward).attribute(t.x),
        ),
        CaptumMethod(
            "GradientShap",
            "expected gradients from the baseline with Gaussian noise: n_samples passes.",
            (Param("n_samples", 5, 1, 500), Param("stdevs", 0.0, 0.0, 10.0), _seed_param()),
            lambda s: (0, s["n_samples"]),
            lambda t, s: captum.attr.GradientShap(t.forward).attribute(
                t.x, baselines=t.baseline, n_samples=s["n_samples"], stdevs=s["stdevs"]
            ),
            sampled=True,
        ),
        CaptumMethod(
            "NoiseTunnel IG",
            "SmoothGrad-style average of IG over noisy inputs: nt_samples x n_steps passes.",
            _noise_tunnel_params(),
            lambda s: (0, s["nt_samples"] * s["n_steps"]),
            lambda t, s: _noise_tunnel(
                captum.attr.IntegratedGradients(t.forward), t, s, internal_batch_size=t.rows_per_pass
            ),
            sampled=True,
        ),
        CaptumMethod(
            "NoiseTunnel SIG",
            "SmoothGrad-style average of SIG over noisy inputs: nt_samples x T x n_steps passes.",
            _noise_tunnel_params(),
            lambda s: (s["nt_samples"] * s["n_steps"], 0),
            lambda t, s: _noise_tunnel(_TokenSIG(t.forward, t.rows_per_pass), t, s),
            sampled=True,
        ),
        CaptumMethod(
            "FeatureAblation",
            "F(x) - F(x with the token at the baseline): T + 1 forward passes (= exact SIG).",
            (),
            lambda s: (1, 1),
            lambda t, s: captum.attr.FeatureAblation(t.forward).attribute(
                t.x, baselines=t.baseline, feature_mask=t.feature_mask, perturbations_per_eval=t.rows_per_pass
            ),
            per_token=True,
        ),
        CaptumMethod(
            "Occlusion",
            "mean occlusion of the windows of sliding_window_shapes tokens covering each token.",
            (Param("sliding_window_shapes", 1, 1, 16),),
            lambda s: (1, 1),
            lambda t, s: _occlusion(t, s["sliding_window_shapes"]),
            per_token=True,
        ),
        CaptumMethod(
            "KernelShap",
            "Shapley values by weighted regression over n_samples token coalitions.",
            (Param("n_samples", 100, 1, 5000), _seed_param()),
            lambda s: (0, s["n_samples"]),
            _surrogate(captum.attr.KernelShap),
            per_token=True,
            sampled=True,
        ),
        CaptumMethod(
            "Lime",
            "a sparse linear surrogate fit on n_samples random token subsets.",
            (Param("n_samples", 100, 1, 5000), _seed_param()),
            lambda s: (0, s["n_samples"]),
            _surrogate(captum.attr.Lime),
            per_token=True,
            sampled=True,
        ),
    )
}
