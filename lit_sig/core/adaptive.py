"""Adaptive IG and SIG: spend passes only on the paths, and the parts of them, that need them.

Along a group's path (token i's for SIG, all tokens' for IG) the integrand is
one-dimensional, f(a) = dF/da, so for any panel [lo, hi] of the path the exact
integral is known from two scores: F(row at hi) - F(row at lo). Panels use
Gauss-Lobatto nodes, whose endpoints are nodes too, so every panel's quadrature
error is measured exactly (up to float rounding) from rows the rule evaluates
anyway. The panel errors of a group add up to its completeness delta, the
same check as the fixed-step methods': F(x) - F(x with the group at its
baseline) - sum of the group's attributions, which is also the exact error of
the group's summed salience. Each group starts with one panel; while
|delta| exceeds the tolerance, its worst panel is halved (the halves reuse its
endpoints and midpoint). All groups' new rows of a round go to the model
together. Every |delta| ends at most the tolerance unless `max_rounds` ran out
or the tolerance is below what the scores' float precision can resolve (a
group stops refining once its |delta| is under that noise floor); the result's
`converged` then says False.

On BERT-like models f has narrow spikes at places that differ from token to
token: low-order panels refined where the error is beat high-order rules there
(3-point Lobatto, i.e. Simpson panels, used the fewest passes in our tests).
"""

import dataclasses

import numpy as np
import torch

from lit_sig.core import attribution
from lit_sig.core import quadrature

DEFAULT_TOLERANCE = 3e-4  # In units of the explained score (a logit by default).
DEFAULT_POINTS = 3  # Lobatto nodes per panel: Simpson's rule, exact to degree 3.
DEFAULT_MAX_ROUNDS = 64  # At most 1 + 2 * 64 rows per group beyond the endpoints.
_INPUT = (-1, 1.0)  # The key of the row of x itself.


@dataclasses.dataclass
class _Panel:
    lo: float
    hi: float
    grad_sum: torch.Tensor  # [T_g, D] quadrature of the group's gradients over [lo, hi]
    error: float  # exact integral of f over [lo, hi] minus its quadrature


def adaptive_path_attribution(
    x: torch.Tensor,
    baseline: torch.Tensor,
    groups: torch.Tensor,
    grad_fn: attribution.GradFn,
    tolerance: float = DEFAULT_TOLERANCE,
    points: int = DEFAULT_POINTS,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
    max_elements: int = attribution.DEFAULT_MAX_ELEMENTS,
    input_eval: tuple[float, torch.Tensor] | None = None,
) -> attribution.PathAttribution:
    """Path attribution refined per group until its |completeness delta| <= `tolerance`.

    Args:
        x: `[T, D]` input embeddings.
        baseline: `[T, D]` baseline embeddings.
        groups: `[G, T]` bool, which tokens move together (disjoint groups).
        grad_fn: the model, see `attribution.GradFn`.
        tolerance: per-group bound on |completeness delta|, in units of F.
        points: Gauss-Lobatto nodes per panel (>= 3).
        max_rounds: refinement rounds at most; a group still above the
            tolerance then keeps its last estimate (its delta shows it).
        max_elements: bound on rows * T * D per `grad_fn` call.
        input_eval: `(score, grads [T, D])` of `x` itself, if the caller has them:
            saves a pass.
    """
    assert points >= 3 and tolerance > 0
    G, T = groups.shape
    if G == 0:
        zeros = torch.zeros_like(x)
        return attribution.PathAttribution(zeros.sum(-1), torch.zeros(0, dtype=x.dtype), 0, zeros)
    members = [torch.nonzero(groups[g]).flatten() for g in range(G)]  # each [T_g]
    delta = x - baseline  # [T, D]
    unit_alphas, unit_weights = quadrature.gauss_lobatto(points)

    # Evaluated rows, keyed by (group, alpha); alpha 1 is the input, shared by all.
    index: dict[tuple[int, float], int] = {}
    scores: list[float] = []
    # Per row: the gradients of its group's moving tokens, [T_g, D]; all of them, [T, D], for the input.
    row_grads: list[torch.Tensor] = []
    if input_eval is not None:
        index[_INPUT] = 0
        scores.append(float(input_eval[0]))
        row_grads.append(input_eval[1])

    def key(g: int, alpha: float) -> tuple[int, float]:
        return _INPUT if alpha == 1.0 else (g, alpha)

    def grads_of(row: int, g: int) -> torch.Tensor:
        return row_grads[row][members[g]] if row == index.get(_INPUT) else row_grads[row]

    def nodes(lo: float, hi: float) -> list[float]:
        return [lo, *(lo + (hi - lo) * unit_alphas[1:-1]).tolist(), hi]

    def panels_of(requests: list[tuple[int, float, float]]) -> list[_Panel]:
        """Evaluates the rows the requested panels still need, then estimates each."""
        new = list(dict.fromkeys(
            k for g, lo, hi in requests for a in nodes(lo, hi) if (k := key(g, a)) not in index
        ))
        if new:
            row_group = np.array([max(g, 0) for g, _ in new])
            row_alpha = np.array([a for _, a in new])
            for rows, chunk_scores, grads, _ in attribution.evaluate_rows(
                x, baseline, groups, row_group, row_alpha, grad_fn, max_elements
            ):
                if not bool(torch.isfinite(chunk_scores).all()):
                    raise ValueError("The model's scores are not finite (NaN or inf); adaptive steps need real scores.")
                scores.extend(chunk_scores.tolist())
                # Copies, so that the chunk ([r, T, D]) itself is freed.
                row_grads.extend(
                    (grads[r] if k == _INPUT else grads[r, members[k[0]]]).clone()
                    for r, k in enumerate(new[rows])
                )
            index.update((k, len(index)) for k in new)
        panels = []
        for g, lo, hi in requests:
            rows = [index[key(g, a)] for a in nodes(lo, hi)]
            weights = torch.as_tensor((hi - lo) * unit_weights, dtype=x.dtype)  # [points]
            grad_sum = torch.einsum("p,ptd->td", weights, torch.stack([grads_of(r, g) for r in rows]))
            exact = scores[rows[-1]] - scores[rows[0]]
            panels.append(_Panel(lo, hi, grad_sum, exact - float((grad_sum * delta[members[g]]).sum())))
        return panels

    panels = [[p] for p in panels_of([(g, 0.0, 1.0) for g in range(G)])]
    # Below this, a delta is the scores' rounding, not the rule's error: refining can't help.
    noise_floor = 16 * torch.finfo(x.dtype).eps * max(1.0, max(abs(v) for v in scores))
    for _ in range(max_rounds):
        worst = {
            g: max(range(len(ps)), key=lambda j: abs(ps[j].error))
            for g, ps in enumerate(panels)
            if abs(sum(p.error for p in ps)) > max(tolerance, noise_floor)
        }
        if not worst:
            break
        requests = []
        for g, j in worst.items():
            lo, hi = panels[g][j].lo, panels[g][j].hi
            requests += [(g, lo, (lo + hi) / 2), (g, (lo + hi) / 2, hi)]
        halves = panels_of(requests)
        for k, (g, j) in enumerate(worst.items()):
            panels[g][j : j + 1] = halves[2 * k : 2 * k + 2]

    weighted = torch.zeros_like(x)  # [T, D]
    for g, ps in enumerate(panels):
        weighted[members[g]] += sum(p.grad_sum for p in ps)
    attributions = delta * weighted  # [T, D]
    score_input = scores[index[_INPUT]]
    score_at_baseline = torch.tensor([scores[index[(g, 0.0)]] for g in range(G)], dtype=x.dtype, device=x.device)  # [G]
    token_attr = attributions.sum(-1)  # [T]
    deltas = score_input - score_at_baseline - groups.to(x.dtype) @ token_attr  # [G]
    converged = bool((deltas.abs() <= tolerance).all())
    return attribution.PathAttribution(token_attr, deltas, len(index), attributions, converged)
