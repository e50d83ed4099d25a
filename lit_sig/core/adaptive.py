"""Adaptive IG and SIG: spend passes only on the paths, and the parts of them, that need them.

Along a group's path (token i's for SIG, all tokens' for IG) the integrand is
one-dimensional, f(a) = dF/da, so for any
panel [lo, hi] of the path the exact integral is known from two scores:
F(row at hi) - F(row at lo). Panels use Gauss-Lobatto nodes, whose endpoints
are nodes too, so every panel's quadrature error is measured exactly (up to
float rounding) from rows the rule evaluates anyway. Each token starts with a
few panels; while the sum of its panels' |errors| exceeds the tolerance, the
panels with the largest errors are halved (endpoints are reused). All groups'
new rows of a round go to the model together. The reported completeness deltas
are the same checks as the fixed-step methods': F(x) - F(x with the group at
its baseline) - sum of the group's attributions.
"""

import numpy as np
import torch

from lit_sig.core import attribution
from lit_sig.core import quadrature

DEFAULT_TOLERANCE = 1e-4  # In units of the explained score (a logit by default).
DEFAULT_POINTS = 5  # Lobatto nodes per panel: exact to degree 7.
DEFAULT_INITIAL_PANELS = (0.0, 0.25, 1.0)  # f peaks near the baseline end on BERTs.
DEFAULT_MAX_ROUNDS = 8


def adaptive_path_attribution(
    x: torch.Tensor,
    baseline: torch.Tensor,
    groups: torch.Tensor,
    grad_fn: attribution.GradFn,
    tolerance: float = DEFAULT_TOLERANCE,
    points: int = DEFAULT_POINTS,
    initial_breaks: tuple[float, ...] = DEFAULT_INITIAL_PANELS,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
    max_elements: int = attribution.DEFAULT_MAX_ELEMENTS,
) -> attribution.PathAttribution:
    """Path attribution refined per group until its summed |panel errors| <= `tolerance`.

    Args:
        x: `[T, D]` input embeddings.
        baseline: `[T, D]` baseline embeddings.
        groups: `[G, T]` bool, which tokens move together (disjoint groups).
        grad_fn: the model, see `attribution.GradFn`.
        tolerance: per-group bound on the summed |panel errors|, in units of F.
        points: Gauss-Lobatto nodes per panel (>= 3).
        initial_breaks: panel boundaries every token starts with, from 0 to 1.
        max_rounds: refinement rounds at most; a group still above the
            tolerance then keeps its last estimate (its delta shows it).
        max_elements: bound on rows * T * D per `grad_fn` call.
    """
    assert points >= 3 and initial_breaks[0] == 0.0 and initial_breaks[-1] == 1.0
    G, T = groups.shape
    if G == 0:
        return attribution.PathAttribution(torch.zeros_like(x), torch.zeros(0, dtype=x.dtype), 0)
    members = [torch.nonzero(groups[g]).flatten() for g in range(G)]  # each [T_g]
    delta = x - baseline  # [T, D]
    unit_alphas, unit_weights = quadrature.gauss_lobatto(points)

    # Evaluated rows, keyed by (group, alpha); alpha 1 is the input, shared by all.
    index: dict[tuple[int, float], int] = {}
    scores: list[torch.Tensor] = []  # chunks of [r]
    group_grads: list[torch.Tensor] = []  # per row: [T_g, D], the gradients of its moving tokens
    panels: list[list[tuple[float, float]]] = [
        list(zip(initial_breaks[:-1], initial_breaks[1:])) for _ in range(G)
    ]

    def key(g: int, alpha: float) -> tuple[int, float]:
        return (-1, 1.0) if alpha == 1.0 else (g, alpha)

    def nodes(lo: float, hi: float) -> np.ndarray:
        return np.concatenate([[lo], lo + (hi - lo) * unit_alphas[1:-1], [hi]])

    def evaluate(requests: list[tuple[int, float]]) -> None:
        new = list(dict.fromkeys(k for g, a in requests if (k := key(g, a)) not in index))
        if not new:
            return
        row_group = np.array([max(g, 0) for g, _ in new])
        row_alpha = np.array([a for _, a in new])
        for rows, chunk_scores, grads, _ in attribution.evaluate_rows(
            x, baseline, groups, row_group, row_alpha, grad_fn, max_elements
        ):
            scores.append(chunk_scores)
            group_grads.extend(grads[r, members[g]] for r, g in enumerate(row_group[rows]))
        for k in new:
            index[k] = len(index)

    def panel_estimate(g: int, lo: float, hi: float, all_scores: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The panel's weighted gradient sum `[T_g, D]` and its exact quadrature error."""
        rows = [index[key(g, a)] for a in nodes(lo, hi)]
        weights = torch.as_tensor((hi - lo) * unit_weights, dtype=x.dtype)  # [points]
        grad_sum = torch.einsum("p,ptd->td", weights, torch.stack([group_grads[r] for r in rows]))
        exact = all_scores[rows[-1]] - all_scores[rows[0]]
        return grad_sum, float(exact - (grad_sum * delta[members[g]]).sum())

    evaluate([(g, a) for g in range(G) for lo, hi in panels[g] for a in nodes(lo, hi)])
    for round_ in range(max_rounds + 1):
        all_scores = torch.cat(scores)  # [R]
        requests = []
        refined = []
        for g in range(G):
            errors = np.array([panel_estimate(g, lo, hi, all_scores)[1] for lo, hi in panels[g]])
            if np.abs(errors).sum() <= tolerance:
                refined.append(panels[g])
                continue
            worst = np.abs(errors).max()
            split = []
            for (lo, hi), error in zip(panels[g], errors):
                if abs(error) >= worst / 2:
                    mid = (lo + hi) / 2
                    split += [(lo, mid), (mid, hi)]
                    requests += [(g, a) for a in (*nodes(lo, mid), *nodes(mid, hi))]
                else:
                    split.append((lo, hi))
            refined.append(split)
        if not requests or round_ == max_rounds:
            break
        panels = refined
        evaluate(requests)

    all_scores = torch.cat(scores)  # [R]
    weighted = torch.zeros_like(x)  # [T, D]
    for g in range(G):
        for lo, hi in panels[g]:
            weighted[members[g]] += panel_estimate(g, lo, hi, all_scores)[0]
    attributions = delta * weighted  # [T, D]
    score_input = all_scores[index[(-1, 1.0)]]
    score_at_baseline = all_scores[[index[(g, 0.0)] for g in range(G)]]  # [G]
    deltas = score_input - score_at_baseline - groups.to(x.dtype) @ attributions.sum(-1)  # [G]
    return attribution.PathAttribution(attributions, deltas, len(index))
