"""Adaptive IG and SIG: a row planner that spends passes only on the paths, and the parts of them, that need them.

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
endpoints and midpoint). Every |delta| ends at most the tolerance unless
`max_rounds` ran out or the tolerance is below what the scores' float precision
can resolve (a group stops refining once its |delta| is under that noise
floor); the result's `converged` then says False.

The rows go through the engine (`engine.evaluate_rows`): each round, the new
rows of every example's refining groups are planned, and the engine builds
them on the scorer's device and packs them, across examples, into passes the
scorer sizes (`rows_per_pass`). Each example's decisions read only its own
rows, so results do not depend on which examples share a run. Per row, only
its score, its slope f(a) and the gradients of its moving tokens are kept, on
the device; the host sees two numbers per row, once per round.

On BERT-like models f has narrow spikes at places that differ from token to
token: low-order panels refined where the error is beat high-order rules there
(3-point Lobatto, i.e. Simpson panels, used the fewest passes in our tests).
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from lit_sig.core import engine, quadrature

DEFAULT_TOLERANCE = 3e-4  # In units of the explained score (a logit by default).
DEFAULT_POINTS = 3  # Lobatto nodes per panel: Simpson's rule, exact to degree 3.
DEFAULT_MAX_ROUNDS = 64  # At most 1 + 2 * 64 rows per group beyond the endpoints.


class _Rule:
    """Gauss-Lobatto nodes of one panel, on [0, 1]."""

    def __init__(self, points: int):
        self.alphas, self.weights = quadrature.gauss_lobatto(points)  # each [points]
        self.middle = None  # The node at 1/2, if the rule has one (odd points): halves share it.
        if points % 2:
            self.middle = points // 2
            self.alphas[self.middle] = 0.5  # Exactly: a halved panel finds its midpoint node again.
        self.inner = self.alphas[1:-1]  # [points - 2]


@dataclasses.dataclass
class _Panels:
    """Panels of one example's paths, one entry each: `[M]` arrays on the host."""

    group: np.ndarray  # [M] int
    lo: np.ndarray  # [M]
    hi: np.ndarray  # [M]
    nodes: np.ndarray  # [M, points] int: the panel's nodes, lo first, hi last
    error: np.ndarray  # [M]: exact integral minus the panel's quadrature

    @staticmethod
    def empty(points: int) -> "_Panels":
        return _Panels(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros((0, points), np.int64), np.zeros(0))

    def arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def select(self, keep: np.ndarray) -> "_Panels":
        return _Panels(*(a[keep] for a in self.arrays()))

    def __add__(self, other: "_Panels") -> "_Panels":
        return _Panels(*(np.concatenate(pair) for pair in zip(self.arrays(), other.arrays())))


class _Paths:
    """One example's panels and the rows they read.

    A node is one (group, alpha) point: a row, except that the input row (alpha 1, nothing
    moved) is one row for G nodes, one per group. On the host, per node: group, alpha,
    score and slope (f(alpha) = the group's gradients . (x - baseline)); on the device:
    score, and the gradients of the group's tokens as (node, token) pairs.
    """

    def __init__(self, problem: engine.PathProblem, rule: _Rule):
        self.problem, self._rule = problem, rule
        self.G = len(problem.groups)
        device, self.dtype = problem.x.device, engine.accumulation_dtype(problem)
        self.delta = (problem.x - problem.baseline).to(self.dtype)  # [T, D]
        self.node_group = np.zeros(0, dtype=np.int64)  # [N]
        self.node_alpha = np.zeros(0)  # [N]
        self.node_score = np.zeros(0)  # [N], on the host
        self.node_slope = np.zeros(0)  # [N]
        self.scores_on_device: list[torch.Tensor] = []  # per round [N_round]
        self.pair_node: list[torch.Tensor] = []  # per piece [P] long
        self.pair_token: list[torch.Tensor] = []  # [P] long
        self.pair_grads: list[torch.Tensor] = []  # [P, D]
        self.panels = _Panels.empty(len(rule.alphas))
        self.rows = 0
        self.noise_floor = 0.0
        self._device = device
        members = problem.groups.cpu().numpy()  # [G, T]: one transfer, then the host plans the pairs.
        self._member_ptr = np.concatenate([[0], np.cumsum(members.sum(1))])  # [G + 1] CSR of each group's tokens
        self._member_token = np.nonzero(members)[1]  # [sum of group sizes]
        self._round: _Round | None = None
        self._new_panels: _Panels | None = None  # This round's, their errors not yet measured.

    # Planning.

    def first_round(self) -> engine.RowPlan:
        """The input row, then each group at its baseline and at the first panel's inner nodes."""
        G, inner = self.G, self._rule.inner
        groups = np.arange(G)
        # Nodes: (g, 1) for every g [the input row], (g, 0), then (g, inner_k) for each k.
        self._add_nodes(np.tile(groups, 2 + len(inner)), np.concatenate([np.ones(G), np.zeros(G), np.repeat(inner, G)]))
        row_group = np.concatenate([[0], np.tile(groups, 1 + len(inner))])  # The input row moves nothing.
        row_alpha = np.concatenate([[1.0], np.zeros(G), np.repeat(inner, G)])
        # Entries (row, node, group): the input row serves G nodes, every other row one.
        entry_row = np.concatenate([np.zeros(G, dtype=np.int64), np.arange(1, len(row_group))])
        entries = (entry_row, np.arange(len(self.node_group)), self.node_group.copy())
        ends = np.arange(G)  # Node (g, 1) is node g; (g, 0) is node G + g; inner k is node (2 + k) * G + g.
        nodes = np.stack([G + groups, *[(2 + k) * G + groups for k in range(len(inner))], ends], axis=1)
        self._new_panels = _Panels(groups, np.zeros(G), np.ones(G), nodes, np.zeros(G))
        return self._plan(row_group, row_alpha, entries)

    def refine(self, threshold: float) -> engine.RowPlan | None:
        """Rows that halve each group's worst panel, for groups with |delta| > `threshold`; None if none."""
        worst = self._worst_panels(threshold)  # [S] panel indices
        if not len(worst):
            return None
        split = self.panels.select(worst)
        group, lo, hi, nodes = split.group, split.lo, split.hi, split.nodes
        middle = (lo + hi) / 2
        inner = self._rule.inner
        first_new = len(self.node_group)
        # New nodes per split: the halves' inner nodes, and the midpoint unless the panel has it.
        halves_alpha = [lo[:, None] + (middle - lo)[:, None] * inner, middle[:, None] + (hi - middle)[:, None] * inner]
        if self._rule.middle is None:
            halves_alpha.append(middle[:, None])
        alphas = np.concatenate(halves_alpha, axis=1)  # [S, per_split]
        per_split = alphas.shape[1]
        self._add_nodes(np.repeat(group, per_split), alphas.ravel())
        new = first_new + np.arange(len(worst) * per_split).reshape(len(worst), per_split)  # [S, per_split]
        k = len(inner)
        mid_node = nodes[:, self._rule.middle] if self._rule.middle is not None else new[:, 2 * k]
        left = np.concatenate([nodes[:, :1], new[:, :k], mid_node[:, None]], axis=1)
        right = np.concatenate([mid_node[:, None], new[:, k : 2 * k], nodes[:, -1:]], axis=1)
        keep = np.ones(len(self.panels.group), dtype=bool)
        keep[worst] = False
        self.panels = self.panels.select(keep)
        self._new_panels = _Panels(
            np.concatenate([group, group]),
            np.concatenate([lo, middle]),
            np.concatenate([middle, hi]),
            np.concatenate([left, right]),
            np.zeros(2 * len(worst)),
        )
        rows = np.arange(len(worst) * per_split)  # One row per new node.
        entries = (rows, first_new + rows, self.node_group[first_new:])
        return self._plan(self.node_group[first_new:], self.node_alpha[first_new:], entries)

    def _worst_panels(self, threshold: float) -> np.ndarray:
        """Per group whose |sum of panel errors| > threshold, the index of its panel of largest |error|."""
        p = self.panels
        group_error = np.bincount(p.group, weights=p.error, minlength=self.G)  # [G]
        refining = np.abs(group_error) > threshold
        order = np.lexsort((-np.abs(p.error), p.group))  # By group, worst first.
        first = order[np.r_[True, np.diff(p.group[order]) != 0]]  # Each group's worst panel.
        return np.sort(first[refining[p.group[first]]])

    def _add_nodes(self, group: np.ndarray, alpha: np.ndarray) -> None:
        self.node_group = np.concatenate([self.node_group, group])
        self.node_alpha = np.concatenate([self.node_alpha, alpha])

    def _plan(
        self, row_group: np.ndarray, row_alpha: np.ndarray, entries: tuple[np.ndarray, np.ndarray, np.ndarray]
    ) -> engine.RowPlan:
        """The round's rows, and where their results go: entries `(row, node, group)`, sorted by row."""
        self.rows += len(row_group)
        self._round = _Round(entries, self._member_ptr, self._member_token, self.dtype, self._device)
        return engine.RowPlan(
            torch.as_tensor(row_group, dtype=torch.long, device=self._device),
            torch.as_tensor(row_alpha, dtype=torch.float64, device=self._device),
            None,
        )

    # Results.

    def absorb(self, rows: slice, scores: torch.Tensor, grads: torch.Tensor) -> None:
        """Keeps the score, slope and moving tokens' gradients of each node that rows `rows` serve."""
        r = self._round
        (e0, e1), (q0, q1) = r.entry_range(rows), r.pair_range(rows)
        entry_row, entry_node = r.entries[0, e0:e1] - rows.start, r.entries[1, e0:e1]  # [E] each
        r.scores[entry_node] = scores.to(self.dtype)[entry_row]
        pair_row, pair_node, pair_token = r.pairs[0, q0:q1] - rows.start, r.pairs[1, q0:q1], r.pairs[2, q0:q1]
        pair_grads = grads[pair_row, pair_token].to(self.dtype)  # [P, D], copied: the pass's grads are freed
        r.slopes.index_add_(0, pair_node, (pair_grads * self.delta[pair_token]).sum(-1))
        self.pair_node.append(pair_node + r.first_node)
        self.pair_token.append(pair_token)
        self.pair_grads.append(pair_grads)

    def round_values(self) -> torch.Tensor:
        """`[2, N_round]` scores and slopes of this round's nodes (for one transfer of all examples)."""
        self.scores_on_device.append(self._round.scores)
        return torch.stack([self._round.scores, self._round.slopes])

    def finish_round(self, values: np.ndarray) -> None:
        """Takes this round's `[2, N_round]` values on the host and measures the new panels' errors."""
        if not np.isfinite(values).all():
            raise ValueError("The model's scores are not finite (NaN or inf); adaptive steps need real scores.")
        self.node_score = np.concatenate([self.node_score, values[0]])
        self.node_slope = np.concatenate([self.node_slope, values[1]])
        new = self._new_panels
        exact = self.node_score[new.nodes[:, -1]] - self.node_score[new.nodes[:, 0]]  # [m]
        estimate = (new.hi - new.lo) * (self.node_slope[new.nodes] @ self._rule.weights)  # [m]
        new.error = exact - estimate
        self.panels = self.panels + new

    def result(self, tolerance: float, keep_dimensions: bool) -> engine.PathAttribution:
        """Attributions from the final panels; deltas recomputed from them, as the fixed rules do."""
        weights = np.zeros(len(self.node_group))  # [N] each node's weight over its group's panels
        p = self.panels
        np.add.at(weights, p.nodes, (p.hi - p.lo)[:, None] * self._rule.weights)
        weights_t = torch.as_tensor(weights, dtype=self.dtype, device=self._device)
        pair_node, pair_token = torch.cat(self.pair_node), torch.cat(self.pair_token)
        weighted = torch.zeros_like(self.delta)  # [T, D]
        weighted.index_add_(0, pair_token, weights_t[pair_node, None] * torch.cat(self.pair_grads))
        attributions = self.delta * weighted  # [T, D]
        token_attr = attributions.sum(-1)  # [T]
        scores = torch.cat(self.scores_on_device)  # [N]
        G = self.G
        deltas = scores[0] - scores[G : 2 * G] - self.problem.groups.to(self.dtype) @ token_attr  # [G]
        converged = bool((deltas.abs() <= tolerance).all())
        return engine.PathAttribution(
            token_attr.cpu(), deltas.cpu(), self.rows, attributions.cpu() if keep_dimensions else None, converged
        )


class _Round:
    """Where one round's results go: per row, the nodes it serves and their (node, token) pairs.

    Planned on the host, sent to the device once: the pieces of a pass then index them
    without a host round trip.
    """

    def __init__(
        self,
        entries: tuple[np.ndarray, np.ndarray, np.ndarray],
        member_ptr: np.ndarray,
        member_token: np.ndarray,
        dtype: torch.dtype,
        device: torch.device,
    ):
        entry_row, entry_node, entry_group = entries  # [E] each, sorted by row
        self.first_node = int(entry_node[0])
        sizes = member_ptr[entry_group + 1] - member_ptr[entry_group]  # [E] tokens each entry moves
        pair_entry = np.repeat(np.arange(len(entry_row)), sizes)  # [P]
        within = np.arange(len(pair_entry)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        pair_token = member_token[member_ptr[entry_group][pair_entry] + within]  # [P]
        self._entry_row, self._pair_row = entry_row, entry_row[pair_entry]  # On the host, for the pieces' ranges.
        node = entry_node - self.first_node  # [E] within the round
        self.entries = torch.as_tensor(np.stack([entry_row, node]), device=device)  # [2, E]
        self.pairs = torch.as_tensor(np.stack([self._pair_row, node[pair_entry], pair_token]), device=device)  # [3, P]
        self.scores = torch.empty(int(node.max()) + 1, dtype=dtype, device=device)  # [N_round]
        self.slopes = torch.zeros_like(self.scores)

    def entry_range(self, rows: slice) -> tuple[int, int]:
        return tuple(int(i) for i in np.searchsorted(self._entry_row, [rows.start, rows.stop]))

    def pair_range(self, rows: slice) -> tuple[int, int]:
        return tuple(int(i) for i in np.searchsorted(self._pair_row, [rows.start, rows.stop]))


def adaptive_attributions(
    problems: Sequence[engine.PathProblem],
    scorer: engine.RowScorer,
    tolerance: float = DEFAULT_TOLERANCE,
    points: int = DEFAULT_POINTS,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
    keep_dimensions: bool = False,
) -> list[engine.PathAttribution]:
    """Path attributions refined per group until its |completeness delta| <= `tolerance`.

    Args:
        problems: the examples' paths (see `engine.PathProblem`; a given `input_score` is
            not used: x is scored in its gradient pass, like every other node).
        scorer: the model (`engine.RowScorer`); every row is a gradient row.
        tolerance: per-group bound on |completeness delta|, in units of F.
        points: Gauss-Lobatto nodes per panel (>= 3).
        max_rounds: refinement rounds at most; a group still above the
            tolerance then keeps its last estimate (its delta shows it).
        keep_dimensions: also return the `[T, D]` attributions.
    """
    assert points >= 3 and tolerance > 0
    rule = _Rule(points)
    paths = [_Paths(p, rule) for p in problems]
    results: list[engine.PathAttribution | None] = [None] * len(problems)
    for i, (p, path) in enumerate(zip(problems, paths)):
        if path.G == 0:  # Nothing moves: nothing to evaluate.
            zeros = torch.zeros(p.x.shape, dtype=path.dtype)
            results[i] = engine.PathAttribution(
                zeros.sum(-1), torch.zeros(0, dtype=path.dtype), 0, zeros if keep_dimensions else None
            )
    active = [i for i, r in enumerate(results) if r is None]
    if not active:
        return results
    plans = {i: paths[i].first_round() for i in active}
    _run_round(problems, paths, plans, scorer, 0)
    for i in active:
        path = paths[i]  # Below this, a delta is the scores' rounding, not the rule's error: refining can't help.
        path.noise_floor = 16 * torch.finfo(problems[i].x.dtype).eps * max(1.0, float(np.abs(path.node_score).max()))
    for round_index in range(1, max_rounds + 1):
        plans = {}
        for i in active:
            plan = paths[i].refine(max(tolerance, paths[i].noise_floor))
            if plan is not None:
                plans[i] = plan
        if not plans:
            break
        _run_round(problems, paths, plans, scorer, round_index)
    for i in active:
        results[i] = paths[i].result(tolerance, keep_dimensions)
    return results


def _run_round(
    problems: Sequence[engine.PathProblem],
    paths: list[_Paths],
    plans: dict[int, engine.RowPlan],
    scorer: engine.RowScorer,
    round_index: int,
) -> None:
    """Evaluates the planned rows of every example in shared passes; one host transfer for all."""
    indices = sorted(plans)
    for j, _, rows, (scores, grads) in engine.evaluate_rows(
        [problems[i] for i in indices], [plans[i] for i in indices], scorer, True, f"adaptive round {round_index}"
    ):
        paths[indices[j]].absorb(rows, scores, grads)
    values = [paths[i].round_values() for i in indices]
    on_host = torch.cat(values, dim=1).double().cpu().numpy()  # [2, sum N_round]
    offset = 0
    for i, v in zip(indices, values):
        paths[i].finish_round(on_host[:, offset : offset + v.shape[1]])
        offset += v.shape[1]
