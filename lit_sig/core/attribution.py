"""Path attributions over one example's token embeddings, in pure torch.

Integrated Gradients (Sundararajan et al. 2017) moves every movable token from
its baseline to its input value at once; Sequential Integrated Gradients
(Enguehard 2023, arXiv 2305.15853) moves one token at a time while the others
stay at their input values. Both are the same computation over "groups" of
tokens that move together: IG has one group of all movable tokens, SIG one group
per token. A row of the computation is one (group, alpha) point on a path:

    row(g, a) = x - (1 - a) * mask_g * (x - baseline)

and the attribution of token t is `(x_t - b_t) * sum_rows w * mask_g[t] * grad_t`.
"""

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
import torch

GradFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Maps embeddings `[R, T, D]` to `(scores [R], d scores / d embeddings [R, T, D])`."""

# Rows pushed through the model per call: bounds memory by the chunk, not T * n.
DEFAULT_MAX_ELEMENTS = 1 << 24  # rows * T * D floats, 64 MB of float32 per tensor


@dataclasses.dataclass
class PathAttribution:
    """Result of a path method for one example.

    Attributes:
        attributions: `[T, D]` per-dimension attributions; sum over D for tokens.
        group_deltas: `[G]` completeness error of each moving group:
            F(x) - F(x with the group at its baseline) - sum of its attributions.
        num_rows: rows (forward + backward passes) the model evaluated.
    """

    attributions: torch.Tensor
    group_deltas: torch.Tensor
    num_rows: int

    @property
    def completeness_delta(self) -> float:
        """IG: the signed delta of its single group; SIG: the largest |delta|."""
        if len(self.group_deltas) == 1:
            return float(self.group_deltas[0])
        return float(self.group_deltas.abs().max()) if len(self.group_deltas) else 0.0


def _rows_per_call(x: torch.Tensor, max_elements: int) -> int:
    T, D = x.shape
    return max(1, max_elements // max(1, T * D))


def evaluate_rows(
    x: torch.Tensor,
    baseline: torch.Tensor,
    groups: torch.Tensor,
    row_group: np.ndarray,
    row_alpha: np.ndarray,
    grad_fn: GradFn,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Evaluates path rows in chunks of at most `max_elements` floats.

    Args:
        x: `[T, D]` input embeddings.
        baseline: `[T, D]` baseline embeddings.
        groups: `[G, T]` bool, which tokens move together.
        row_group: `[R]` int group of each row.
        row_alpha: `[R]` position on the path, 0 = baseline, 1 = input.
        grad_fn: the model, see `GradFn`.
        max_elements: bound on rows * T * D per `grad_fn` call.

    Yields:
        `(rows, scores [r], grads [r, T, D], masks [r, T])` per chunk, where
        `rows` is the chunk's slice of the row arrays.
    """
    delta = (x - baseline).unsqueeze(0)  # [1, T, D]
    masks = groups.to(x.dtype)  # [G, T]
    step = _rows_per_call(x, max_elements)
    for start in range(0, len(row_group), step):
        rows = slice(start, start + step)
        mask = masks[torch.as_tensor(row_group[rows])]  # [r, T]
        alpha = torch.as_tensor(row_alpha[rows], dtype=x.dtype)  # [r]
        moved = ((1.0 - alpha)[:, None] * mask).unsqueeze(-1)  # [r, T, 1]
        scores, grads = grad_fn(x.unsqueeze(0) - moved * delta)
        assert grads.shape == (len(alpha), *x.shape), grads.shape
        yield rows, scores.to(x.dtype).cpu(), grads.to(x.dtype).cpu(), mask


def path_attribution(
    x: torch.Tensor,
    baseline: torch.Tensor,
    groups: torch.Tensor,
    grad_fn: GradFn,
    alphas: np.ndarray,
    weights: np.ndarray,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    input_score: float | None = None,
) -> PathAttribution:
    """Integrates gradients along each group's path with one quadrature rule.

    Besides the `G * n` integration rows, scores `G + 1` endpoint rows (each
    group at its baseline, and the input itself, unless the caller gives its
    `input_score`) for the completeness deltas.
    """
    G, T = groups.shape
    n = len(alphas)
    assert len(weights) == n and x.shape == baseline.shape and x.shape[0] == T
    ends = G + (input_score is None)  # Endpoint rows to evaluate.
    row_group = np.concatenate([np.repeat(np.arange(G), n), np.arange(G), np.zeros(ends - G, dtype=int)])
    row_alpha = np.concatenate([np.tile(alphas, G), np.zeros(G), np.ones(ends - G)])
    row_weight = np.concatenate([np.tile(weights, G), np.zeros(ends)])
    weighted_grads = torch.zeros_like(x)  # [T, D]
    scores = torch.empty(len(row_group), dtype=x.dtype)  # [R]
    for rows, row_scores, grads, mask in evaluate_rows(
        x, baseline, groups, row_group, row_alpha, grad_fn, max_elements
    ):
        scores[rows] = row_scores
        weight = torch.as_tensor(row_weight[rows], dtype=x.dtype)  # [r]
        weighted_grads += torch.einsum("r,rt,rtd->td", weight, mask, grads)
    attributions = (x - baseline) * weighted_grads  # [T, D]
    token_attr = attributions.sum(-1)  # [T]
    score_input = scores[-1] if input_score is None else input_score
    score_at_baseline = scores[G * n : G * n + G]  # [G]
    group_sums = groups.to(x.dtype) @ token_attr  # [G]
    deltas = score_input - score_at_baseline - group_sums
    return PathAttribution(attributions, deltas, len(row_group))


def integrated_gradients(
    x: torch.Tensor,
    baseline: torch.Tensor,
    grad_fn: GradFn,
    alphas: np.ndarray,
    weights: np.ndarray,
    movable: torch.Tensor | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> PathAttribution:
    """IG of `x` `[T, D]` from `baseline`; tokens not `movable` `[T]` stay at x."""
    groups = ig_groups(_movable(x, movable))
    return path_attribution(x, baseline, groups, grad_fn, alphas, weights, max_elements)


def sequential_integrated_gradients(
    x: torch.Tensor,
    baseline: torch.Tensor,
    grad_fn: GradFn,
    alphas: np.ndarray,
    weights: np.ndarray,
    movable: torch.Tensor | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> PathAttribution:
    """SIG: IG once per movable token, moving that token alone."""
    groups = sig_groups(_movable(x, movable))
    return path_attribution(x, baseline, groups, grad_fn, alphas, weights, max_elements)


def ig_groups(movable: torch.Tensor) -> torch.Tensor:
    """IG moves all `[T]` movable tokens together: `[1, T]`."""
    return movable.unsqueeze(0)


def sig_groups(movable: torch.Tensor) -> torch.Tensor:
    """SIG moves each movable token alone: `[P, T]`, one row per movable token."""
    return torch.eye(len(movable), dtype=torch.bool)[movable]


def _movable(x: torch.Tensor, movable: torch.Tensor | None) -> torch.Tensor:
    if movable is None:
        return torch.ones(x.shape[0], dtype=torch.bool)
    assert movable.shape == x.shape[:1] and movable.dtype == torch.bool
    return movable


def gradient_norm(grads: torch.Tensor) -> torch.Tensor:
    """L2 norm of each token's gradient: `[T, D]` -> `[T]`."""
    return torch.linalg.vector_norm(grads, dim=-1)


def gradient_dot_input(grads: torch.Tensor, embs: torch.Tensor) -> torch.Tensor:
    """Gradient times input, summed over the embedding: `[T, D]` -> `[T]`."""
    return (grads * embs).sum(-1)


def normalize(scores: torch.Tensor) -> torch.Tensor:
    """Scales `scores` so that their absolute values sum to 1 (all zeros stay)."""
    total = scores.abs().sum()
    return scores / total if total > 0 else scores
