"""Adaptive path attribution on a synthetic model with a sharp step along each token's path.

F = sum_t tanh(s_t * (mean(row_t) - 0.3 * mean(x_t))) is separable over tokens, so every
reference is exact: occlusion gaps by direct evaluation, and IG's integral in closed form.
"""

import numpy as np
import pytest
import torch

from lit_sig.core import adaptive, attribution, engine
from tests.helpers import FunctionScorer, PassRecorder

T, D = 5, 3
torch.manual_seed(0)
X = torch.randn(T, D, dtype=torch.float64)
BASELINE = torch.zeros(T, D, dtype=torch.float64)
STEEPNESS = torch.tensor([1.0, 5.0, 40.0, 120.0, 2.0], dtype=torch.float64)  # Token 3 is nearly a step.
ALL = torch.ones(T, dtype=torch.bool)


def score(rows: torch.Tensor, x: torch.Tensor = X, steepness: torch.Tensor = STEEPNESS) -> torch.Tensor:
    """`[R, T, D] -> [R]`: sharp where a token crosses 30% of its way from the baseline."""
    return torch.tanh(steepness * (rows.mean(-1) - 0.3 * x.mean(-1))).sum(-1)


SCORER = FunctionScorer(score)


def run(groups: torch.Tensor, tolerance: float, scorer=SCORER, **kwargs) -> engine.PathAttribution:
    problem = engine.PathProblem(None, X, BASELINE, groups)
    (result,) = adaptive.adaptive_attributions([problem], scorer, tolerance, keep_dimensions=True, **kwargs)
    return result


def exact_gaps() -> torch.Tensor:
    """F(x) - F(x with token t at its baseline), `[T]`."""
    moved = X.repeat(T, 1, 1)  # [T, T, D]
    moved[torch.arange(T), torch.arange(T)] = BASELINE[0]
    return score(X[None])[0] - score(moved)


def exact_ig(movable: torch.Tensor) -> torch.Tensor:
    """`[T, D]` IG from the zero baseline in closed form.

    F is separable and along the path mean(row_t) = a m_t, so the attribution of x_td is
    x_td / D * integral of s sech^2(s m (a - 0.3)) da = x_td / D * (tanh(0.7 s m) + tanh(0.3 s m)) / m.
    """
    m = X.mean(-1)  # [T]
    per_token = (torch.tanh(0.7 * STEEPNESS * m) + torch.tanh(0.3 * STEEPNESS * m)) / m  # [T]
    return X / D * per_token[:, None] * movable[:, None]


@pytest.mark.parametrize("tolerance", [1e-3, 1e-5])
def test_sig_groups_reach_the_tolerance(tolerance):
    result = run(attribution.sig_groups(ALL), tolerance, max_rounds=200)
    np.testing.assert_allclose(result.token_attributions, exact_gaps(), atol=tolerance)
    np.testing.assert_allclose(result.group_deltas, exact_gaps() - result.token_attributions, atol=1e-12)
    assert result.converged


def test_steep_tokens_get_more_rows_than_smooth_ones():
    """Passes go where they are needed: fixed steps would spend the same on each token."""
    problems = []
    for t in range(T):
        groups = torch.zeros(1, T, dtype=torch.bool)
        groups[0, t] = True
        problems.append(engine.PathProblem(t, X, BASELINE, groups))
    results = adaptive.adaptive_attributions(problems, SCORER, 1e-6, max_rounds=200)
    rows_per_token = [r.num_rows for r in results]
    assert rows_per_token[3] > 2 * rows_per_token[0]
    assert rows_per_token[0] < 50  # A smooth token needs fewer rows than 50-step SIG.
    np.testing.assert_allclose([r.token_attributions.sum() for r in results], exact_gaps(), atol=1e-6)


def test_ig_group_equals_its_closed_form():
    movable = torch.tensor([True, True, False, True, True])
    result = run(attribution.ig_groups(movable), 1e-8, points=5, max_rounds=400)
    np.testing.assert_allclose(result.attributions, exact_ig(movable), atol=1e-6)
    assert torch.all(result.attributions[2] == 0)  # A fixed token gets nothing.


def test_no_movable_tokens():
    result = run(torch.zeros(0, T, dtype=torch.bool), adaptive.DEFAULT_TOLERANCE)
    assert result.num_rows == 0 and torch.all(result.attributions == 0) and result.completeness_delta == 0.0


def test_a_linear_model_needs_only_the_first_panel():
    """Along a straight path a linear model's integrand is constant: Simpson is exact at once."""
    weights = torch.randn(T, D, dtype=torch.float64)
    result = run(attribution.sig_groups(ALL), 1e-12, FunctionScorer(lambda rows: (rows * weights).sum((1, 2))))
    assert result.num_rows == 2 * T + 1  # Each token at 0 and 1/2; the input once.
    np.testing.assert_allclose(result.attributions, X * weights, atol=1e-12)


def test_a_tolerance_below_float_precision_is_reported_not_met_and_bounded():
    """float32 scores can't resolve 1e-12: refinement stops at their noise floor and says so."""
    scorer = FunctionScorer(lambda rows: score(rows.double()).float())
    problem = engine.PathProblem(None, X.float(), BASELINE.float(), attribution.sig_groups(ALL))
    (result,) = adaptive.adaptive_attributions([problem], scorer, 1e-12)
    assert not result.converged
    assert result.num_rows <= T * (2 + 2 * adaptive.DEFAULT_MAX_ROUNDS) + 1
    (met,) = adaptive.adaptive_attributions([problem], scorer, 1e-3)
    assert met.converged and float(met.group_deltas.abs().max()) <= 1e-3


def test_non_finite_scores_are_refused():
    with pytest.raises(ValueError, match="not finite"):
        run(attribution.sig_groups(ALL), 1e-3, FunctionScorer(lambda rows: score(rows) * float("nan")))


def _examples() -> list[engine.PathProblem]:
    """Three inputs of 5, 9 and 2 tokens, each with its own model (steepness), SIG and IG groups."""
    problems = []
    for seed, length in enumerate((5, 9, 2)):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(length, D, dtype=torch.float64, generator=generator)
        steepness = 1 + 60 * torch.rand(length, dtype=torch.float64, generator=generator)
        movable = torch.ones(length, dtype=torch.bool)
        movable[0] = False  # A fixed token, as [CLS] would be.
        for groups in (attribution.sig_groups(movable), attribution.ig_groups(movable)):
            problems.append(engine.PathProblem((x, steepness), x, torch.zeros_like(x), groups))
    return problems


class KeyedScorer(FunctionScorer):
    """Each piece scored with its own example's model: the key is `(x, steepness)`."""

    def __init__(self):
        super().__init__(score)

    def score_rows(self, pieces, with_grads):
        return [
            FunctionScorer(lambda r, k=key: score(r, *k)).score_rows([(key, rows)], with_grads)[0]
            for key, rows in pieces
        ]


@pytest.mark.parametrize("rows_per_pass", [1, 7, 1000])
def test_results_do_not_depend_on_batch_mates_or_pass_size(rows_per_pass):
    problems = _examples()
    recorder = PassRecorder(KeyedScorer(), rows_per_pass)
    together = adaptive.adaptive_attributions(problems, recorder, 1e-5, keep_dimensions=True)
    assert max(rows for _, rows, _ in recorder.passes) <= rows_per_pass
    if rows_per_pass > 1:
        assert max(examples for examples, _, _ in recorder.passes) > 1  # Examples do share passes.
    for p, shared in zip(problems, together):
        (alone,) = adaptive.adaptive_attributions([p], KeyedScorer(), 1e-5, keep_dimensions=True)
        assert (shared.num_rows, shared.converged) == (alone.num_rows, alone.converged)
        np.testing.assert_allclose(shared.attributions, alone.attributions, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(shared.group_deltas, alone.group_deltas, rtol=1e-12, atol=1e-14)
        assert shared.converged and float(shared.group_deltas.abs().max()) <= 1e-5


def test_the_first_pass_at_128_tokens_respects_rows_per_pass():
    """The first round of SIG at T = 128 is 2T + 1 = 257 rows: in passes of at most the scorer's 31."""
    length = 128
    x = torch.randn(length, D, dtype=torch.float64)
    problem = engine.PathProblem(None, x, torch.zeros_like(x), attribution.sig_groups(torch.ones(length, dtype=bool)))
    recorder = PassRecorder(FunctionScorer(lambda rows: torch.tanh(rows.mean(-1) - 0.3 * x.mean(-1)).sum(-1)), 31)
    adaptive.adaptive_attributions([problem], recorder, 1e-3)
    rows = [r for _, r, _ in recorder.passes]
    assert max(rows) <= 31 and all(with_grads for _, _, with_grads in recorder.passes)
    assert rows[:9] == [31] * 8 + [257 - 8 * 31]  # The first round, then the refinements.
