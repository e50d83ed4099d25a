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

from collections.abc import Callable, Iterator

import numpy as np
import torch

from lit_sig.core import cancellation, engine
from lit_sig.core.engine import PathAttribution

GradFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Maps embeddings `[R, T, D]` to `(scores [R], d scores / d embeddings [R, T, D])`."""

# Rows pushed through a `GradFn` per call: bounds memory by the chunk, not T * n.
DEFAULT_MAX_ELEMENTS = 1 << 24  # rows * T * D floats, 64 MB of float32 per tensor


def rows_per_call(num_tokens: int, emb_dim: int, max_elements: int = DEFAULT_MAX_ELEMENTS) -> int:
    """Rows of `[num_tokens, emb_dim]` that fit in `max_elements` floats (at least 1)."""
    return max(1, max_elements // max(1, num_tokens * emb_dim))


def evaluate_rows(
    x: torch.Tensor,
    baseline: torch.Tensor,
    groups: torch.Tensor,
    row_group: np.ndarray,
    row_alpha: np.ndarray,
    grad_fn: GradFn,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Evaluates path rows of one example in chunks of at most `max_elements` floats.

    Args:
        x: `[T, D]` input embeddings.
        baseline: `[T, D]` baseline embeddings.
        groups: `[G, T]` bool, which tokens move together.
        row_group: `[R]` int group of each row.
        row_alpha: `[R]` position on the path, 0 = baseline, 1 = input.
        grad_fn: the model, see `GradFn`.
        max_elements: bound on rows * T * D per `grad_fn` call.

    Yields:
        `(rows, scores [r], grads [r, T, D], masks [r, T])` per chunk on x's
        device, where `rows` is the chunk's slice of the row arrays.
    """
    delta = (x - baseline).unsqueeze(0)  # [1, T, D]
    masks = groups.to(x.dtype)  # [G, T]
    step = rows_per_call(*x.shape, max_elements)
    for start in range(0, len(row_group), step):
        cancellation.check()
        rows = slice(start, start + step)
        mask = masks[torch.as_tensor(row_group[rows], device=x.device)]  # [r, T]
        alpha = torch.as_tensor(row_alpha[rows], dtype=x.dtype, device=x.device)  # [r]
        moved = ((1.0 - alpha)[:, None] * mask).unsqueeze(-1)  # [r, T, 1]
        scores, grads = grad_fn(x.unsqueeze(0) - moved * delta)
        assert grads.shape == (len(alpha), *x.shape), grads.shape
        yield rows, scores.to(x.device, x.dtype), grads.to(x.device, x.dtype), mask


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
    """One example's paths through a `GradFn` (see `engine.path_attributions`).

    Besides the `G * n` integration rows, scores `G + 1` endpoint rows (each
    group at its baseline, and the input itself, unless the caller gives its
    `input_score`) for the completeness deltas. Keeps per-dimension attributions.
    """
    assert x.shape == baseline.shape and groups.shape[1] == x.shape[0]
    scorer = engine.GradFnScorer(grad_fn, rows_per_call(*x.shape, max_elements), x.device)
    problem = engine.PathProblem(None, x, baseline, groups, input_score)
    return engine.path_attributions([problem], scorer, alphas, weights, keep_dimensions=True)[0]


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
    return torch.eye(len(movable), dtype=torch.bool, device=movable.device)[movable]


def _movable(x: torch.Tensor, movable: torch.Tensor | None) -> torch.Tensor:
    if movable is None:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
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
