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

from lit_sig.core import attribution, quadrature

DEFAULT_TOLERANCE = 3e-4  # In units of the explained score (a logit by default).
DEFAULT_POINTS = 3  # Lobatto nodes per panel: Simpson's rule, exact to degree 3.
DEFAULT_MAX_ROUNDS = 64  # At most 1 + 2 * 64 rows per group beyond the endpoints.


@dataclasses.dataclass(frozen=True)
class _Node:
    """A row: `group` moved to `alpha` along its path; the input row (nothing moved) has group None.

    Panel ends are dyadic (halving [0, 1]), so equal alphas are equal floats and
    rows at a shared end are found again exactly.
    """

    group: int | None
    alpha: float


_INPUT_NODE = _Node(None, 1.0)


@dataclasses.dataclass
class _Panel:
    lo: float
    hi: float
    grad_sum: torch.Tensor  # [T_g, D] quadrature of the group's gradients over [lo, hi]
    error: float  # exact integral of f over [lo, hi] minus its quadrature


class _Rows:
    """The rows evaluated so far: their scores, and the gradients of their moving tokens."""

    def __init__(
        self,
        x: torch.Tensor,
        baseline: torch.Tensor,
        groups: torch.Tensor,
        grad_fn: attribution.GradFn,
        max_elements: int,
    ):
        self._x, self._baseline, self._groups = x, baseline, groups
        self._grad_fn, self._max_elements = grad_fn, max_elements
        self.members = [torch.nonzero(groups[g]).flatten() for g in range(len(groups))]  # each [T_g]
        self.scores: dict[_Node, float] = {}
        self._grads: dict[_Node, torch.Tensor] = {}  # [T_g, D] (the input row: [T, D])

    @staticmethod
    def node(group: int, alpha: float) -> _Node:
        return _INPUT_NODE if alpha == 1.0 else _Node(group, alpha)

    def add_input(self, score: float, grads: torch.Tensor) -> None:
        self.scores[_INPUT_NODE], self._grads[_INPUT_NODE] = score, grads

    def grads(self, node: _Node, group: int) -> torch.Tensor:
        """`[T_g, D]` gradients of `group`'s tokens at `node`."""
        grads = self._grads[node]
        return grads[self.members[group]] if node == _INPUT_NODE else grads

    def evaluate(self, nodes: list[_Node]) -> None:
        """Scores the nodes not seen yet, in chunks, keeping only what later panels need."""
        new = list(dict.fromkeys(n for n in nodes if n not in self.scores))
        if not new:
            return
        row_group = np.array([n.group or 0 for n in new])
        row_alpha = np.array([n.alpha for n in new])
        for rows, chunk_scores, grads, _ in attribution.evaluate_rows(
            self._x, self._baseline, self._groups, row_group, row_alpha, self._grad_fn, self._max_elements
        ):
            if not bool(torch.isfinite(chunk_scores).all()):
                raise ValueError("The model's scores are not finite (NaN or inf); adaptive steps need real scores.")
            for r, n in enumerate(new[rows]):
                self.scores[n] = float(chunk_scores[r])
                # Copies, so that the chunk ([r, T, D]) itself is freed.
                self._grads[n] = (grads[r] if n == _INPUT_NODE else grads[r, self.members[n.group]]).clone()


class _Refiner:
    """Builds panels of one rule over each group's path from the rows it evaluates."""

    def __init__(self, rows: _Rows, delta: torch.Tensor, points: int):
        self._rows, self._delta = rows, delta  # delta: [T, D] x - baseline
        self._unit_alphas, self._unit_weights = quadrature.gauss_lobatto(points)

    def _nodes(self, group: int, lo: float, hi: float) -> list[_Node]:
        inner = (lo + (hi - lo) * self._unit_alphas[1:-1]).tolist()
        return [self._rows.node(group, a) for a in (lo, *inner, hi)]

    def panels(self, requests: list[tuple[int, float, float]]) -> list[_Panel]:
        """Evaluates the rows the `(group, lo, hi)` panels still need, then estimates each."""
        self._rows.evaluate([n for g, lo, hi in requests for n in self._nodes(g, lo, hi)])
        return [self._panel(g, lo, hi) for g, lo, hi in requests]

    def _panel(self, group: int, lo: float, hi: float) -> _Panel:
        nodes = self._nodes(group, lo, hi)
        weights = torch.as_tensor(
            (hi - lo) * self._unit_weights, dtype=self._delta.dtype, device=self._delta.device
        )  # [points]
        grads = torch.stack([self._rows.grads(n, group) for n in nodes])  # [points, T_g, D]
        grad_sum = torch.einsum("p,ptd->td", weights, grads)
        exact = self._rows.scores[nodes[-1]] - self._rows.scores[nodes[0]]
        estimate = float((grad_sum * self._delta[self._rows.members[group]]).sum())
        return _Panel(lo, hi, grad_sum, exact - estimate)


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
    G = len(groups)
    if G == 0:
        zeros = torch.zeros_like(x)
        return attribution.PathAttribution(zeros.sum(-1), torch.zeros(0, dtype=x.dtype), 0, zeros)
    rows = _Rows(x, baseline, groups, grad_fn, max_elements)
    if input_eval is not None:
        rows.add_input(float(input_eval[0]), input_eval[1])
    refiner = _Refiner(rows, x - baseline, points)
    panels = [[p] for p in refiner.panels([(g, 0.0, 1.0) for g in range(G)])]
    # Below this, a delta is the scores' rounding, not the rule's error: refining can't help.
    noise_floor = 16 * torch.finfo(x.dtype).eps * max(1.0, max(abs(v) for v in rows.scores.values()))
    for _ in range(max_rounds):
        worst = _worst_panels(panels, max(tolerance, noise_floor))
        if not worst:
            break
        requests = []
        for g, j in worst.items():
            lo, hi = panels[g][j].lo, panels[g][j].hi
            requests += [(g, lo, (lo + hi) / 2), (g, (lo + hi) / 2, hi)]
        halves = refiner.panels(requests)
        for k, (g, j) in enumerate(worst.items()):
            panels[g][j : j + 1] = halves[2 * k : 2 * k + 2]
    return _result(x, baseline, groups, rows, panels, tolerance)


def _worst_panels(panels: list[list[_Panel]], tolerance: float) -> dict[int, int]:
    """`{group: index of its worst panel}` for every group whose |delta| exceeds `tolerance`."""
    return {
        g: max(range(len(ps)), key=lambda j: abs(ps[j].error))
        for g, ps in enumerate(panels)
        if abs(sum(p.error for p in ps)) > tolerance
    }


def _result(
    x: torch.Tensor,
    baseline: torch.Tensor,
    groups: torch.Tensor,
    rows: _Rows,
    panels: list[list[_Panel]],
    tolerance: float,
) -> attribution.PathAttribution:
    weighted = torch.zeros_like(x)  # [T, D]
    for g, ps in enumerate(panels):
        weighted[rows.members[g]] += sum(p.grad_sum for p in ps)
    attributions = (x - baseline) * weighted  # [T, D]
    token_attr = attributions.sum(-1)  # [T]
    score_input = rows.scores[_INPUT_NODE]
    score_at_baseline = torch.tensor(
        [rows.scores[_Node(g, 0.0)] for g in range(len(groups))], dtype=x.dtype, device=x.device
    )  # [G]
    deltas = score_input - score_at_baseline - groups.to(x.dtype) @ token_attr  # [G]
    converged = bool((deltas.abs() <= tolerance).all())
    return attribution.PathAttribution(token_attr, deltas, len(rows.scores), attributions, converged)
