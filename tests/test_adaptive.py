"""Adaptive path attribution on a synthetic model with a sharp step along each token's path."""

import numpy as np
import pytest
import torch

from lit_sig.core import adaptive, attribution, quadrature

T, D = 5, 3
torch.manual_seed(0)
X = torch.randn(T, D, dtype=torch.float64)
BASELINE = torch.zeros(T, D, dtype=torch.float64)
STEEPNESS = torch.tensor([1.0, 5.0, 40.0, 120.0, 2.0], dtype=torch.float64)  # Token 3 is nearly a step.


def grad_fn(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """F = sum_t tanh(s_t * (mean(row_t) - 0.3 * mean(x_t))): sharp where a token crosses 30%."""
    rows = rows.detach().requires_grad_(True)  # [R, T, D]
    score = torch.tanh(STEEPNESS * (rows.mean(-1) - 0.3 * X.mean(-1))).sum(-1)  # [R]
    (grads,) = torch.autograd.grad(score.sum(), rows)
    return score.detach(), grads


def exact_gaps() -> torch.Tensor:
    scores = []
    for t in range(T):
        moved = X.clone()
        moved[t] = BASELINE[t]
        scores.append(grad_fn(moved[None])[0][0])
    return grad_fn(X[None])[0][0] - torch.stack(scores)  # [T]


@pytest.mark.parametrize("tolerance", [1e-3, 1e-5])
def test_sig_groups_reach_the_tolerance(tolerance):
    groups = attribution.sig_groups(torch.ones(T, dtype=torch.bool))
    result = adaptive.adaptive_path_attribution(X, BASELINE, groups, grad_fn, tolerance, max_rounds=200)
    token_sums = result.attributions.sum(-1)
    np.testing.assert_allclose(token_sums, exact_gaps(), atol=tolerance)
    np.testing.assert_allclose(result.group_deltas, exact_gaps() - token_sums, atol=1e-12)


def test_steep_tokens_get_more_rows_than_smooth_ones():
    """Passes go where they are needed: fixed steps would spend the same on each token."""
    rows_per_token = []
    for t in range(T):
        groups = torch.zeros(1, T, dtype=torch.bool)
        groups[0, t] = True
        result = adaptive.adaptive_path_attribution(X, BASELINE, groups, grad_fn, 1e-6, max_rounds=200)
        rows_per_token.append(result.num_rows)
    assert rows_per_token[3] > 2 * rows_per_token[0]
    assert rows_per_token[0] < 50  # A smooth token needs fewer rows than 50-step SIG.


def test_ig_group_matches_fixed_ig():
    movable = torch.tensor([True, True, False, True, True])
    fixed = attribution.integrated_gradients(
        X, BASELINE, grad_fn, *quadrature.quadrature("gausslegendre", 400), movable
    )
    result = adaptive.adaptive_path_attribution(
        X, BASELINE, attribution.ig_groups(movable), grad_fn, 1e-8, points=5, max_rounds=400
    )
    np.testing.assert_allclose(result.attributions, fixed.attributions, atol=1e-6)
    assert torch.all(result.attributions[2] == 0)  # A fixed token gets nothing.


def test_no_movable_tokens():
    result = adaptive.adaptive_path_attribution(X, BASELINE, torch.zeros(0, T, dtype=torch.bool), grad_fn)
    assert result.num_rows == 0 and torch.all(result.attributions == 0) and result.completeness_delta == 0.0


def test_a_linear_model_needs_only_the_first_panel():
    """Along a straight path a linear model's integrand is constant: Simpson is exact at once."""
    weights = torch.randn(T, D, dtype=torch.float64)

    def linear(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [R, T, D]
        return (rows * weights).sum((1, 2)), weights.expand_as(rows)

    groups = attribution.sig_groups(torch.ones(T, dtype=torch.bool))
    result = adaptive.adaptive_path_attribution(X, BASELINE, groups, linear, 1e-12)
    assert result.num_rows == 2 * T + 1  # Each token at 0 and 1/2; the input once.
    np.testing.assert_allclose(result.attributions, X * weights, atol=1e-12)


def test_a_tolerance_below_float_precision_is_reported_not_met_and_bounded():
    """float32 scores can't resolve 1e-12: refinement stops at their noise floor and says so."""
    x, baseline = X.float(), BASELINE.float()

    def grad_fn32(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, grads = grad_fn(rows.double())
        return scores.float(), grads.float()

    groups = attribution.sig_groups(torch.ones(T, dtype=torch.bool))
    result = adaptive.adaptive_path_attribution(x, baseline, groups, grad_fn32, 1e-12)
    assert not result.converged
    assert result.num_rows <= T * (2 + 2 * adaptive.DEFAULT_MAX_ROUNDS) + 1
    met = adaptive.adaptive_path_attribution(x, baseline, groups, grad_fn32, 1e-3)
    assert met.converged and float(met.group_deltas.abs().max()) <= 1e-3


def test_non_finite_scores_are_refused():
    def nan_scores(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, grads = grad_fn(rows)
        return scores * float("nan"), grads

    groups = attribution.sig_groups(torch.ones(T, dtype=torch.bool))
    with pytest.raises(ValueError, match="not finite"):
        adaptive.adaptive_path_attribution(X, BASELINE, groups, nan_scores)
