"""What IG and SIG move, and the salience of plain gradients, in pure torch.

Integrated Gradients (Sundararajan et al. 2017) moves every movable token from
its baseline to its input value at once; Sequential Integrated Gradients
(Enguehard 2023, arXiv 2305.15853) moves one token at a time while the others
stay at their input values. Both are the same computation over "groups" of
tokens that move together: IG has one group of all movable tokens, SIG one group
per token. The engine (`lit_sig.core.engine`) turns groups into path rows and
attributions; fixed rules and adaptive panels (`lit_sig.core.adaptive`) alike.
"""

import torch


def ig_groups(movable: torch.Tensor) -> torch.Tensor:
    """IG moves all `[T]` movable tokens together: `[1, T]`."""
    return movable.unsqueeze(0)


def sig_groups(movable: torch.Tensor) -> torch.Tensor:
    """SIG moves each movable token alone: `[P, T]`, one row per movable token."""
    return torch.eye(len(movable), dtype=torch.bool, device=movable.device)[movable]


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
