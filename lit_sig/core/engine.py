"""The path engine: IG and SIG rows of many examples, built and summed on the model's device.

A row is one (group, alpha) point on a path of one example:

    row(g, a) = x - (1 - a) * mask_g * (x - baseline)          # [T, D]

The engine builds rows where the model runs, hands them to a `RowScorer` in
passes the scorer sizes to its device (rows of several examples share a pass),
accumulates `sum_rows w * mask_g * grad` in float32 on that device, and brings
back only per-token results. Nothing in here knows about LIT or Hugging Face.

Two computations share the machinery:
- `path_attributions`: the quadrature of a fixed rule `(alphas, weights)` over
  every group's path (gradient passes), plus score-only endpoint rows for the
  completeness deltas.
- `occlusion_attributions`: SIG's token salience in closed form. Summed over
  the embedding, SIG's attribution of token i is the integral of dF/da along a
  path on which only token i moves, so it equals F(x) - F(x with token i at its
  baseline): one score-only row per token, and the input's own score.

Adaptive steps (`lit_sig.core.adaptive`) plan their rows round by round and hand
them to `evaluate_rows`, the same builder and pass packer as these two.
"""

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from lit_sig.core import cancellation, checkpoint, progress

Piece = tuple[Any, torch.Tensor]
"""`(key, rows [r, T_key, D])`: rows of one example, `key` as given in its `PathProblem`."""


class RowScorer(Protocol):
    """The model, as the engine sees it."""

    device: torch.device

    def rows_per_pass(self, num_tokens: int, with_grads: bool) -> int:
        """Rows of `num_tokens` word tokens that one pass should hold."""

    def score_rows(self, pieces: Sequence[Piece], with_grads: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per piece: `(scores [r], grads [r, T, D] or None)`, on `device`, in one pass.

        Gradients at a row's positions before its first change from `x` (before its first movable
        token, for a row equal to `x`) may be 0: a row of group g with alpha < 1 equals `x` at token j
        only where g does not move j (weight 0) or `baseline` equals `x` there (x - b = 0).
        """


@dataclasses.dataclass(eq=False)
class PathProblem:
    """One example's paths.

    Attributes:
        key: handed to the scorer with this example's rows.
        x: `[T, D]` input embeddings, on the scorer's device.
        baseline: `[T, D]` baseline embeddings (equal to x where a token never moves).
        groups: `[G, T]` bool, which tokens move together (disjoint).
        input_score: F(x), if known (a 0-d tensor or float); else it is scored.
    """

    key: Any
    x: torch.Tensor
    baseline: torch.Tensor
    groups: torch.Tensor
    input_score: torch.Tensor | float | None = None


@dataclasses.dataclass
class PathAttribution:
    """Result of a path method for one example, on the CPU.

    Attributes:
        token_attributions: `[T]` attribution of each token (summed over D).
        group_deltas: `[G]` completeness error of each group: F(x) - F(x with the
            group at its baseline) - sum of its attributions; None when unmeasured.
        num_rows: rows the model evaluated (gradient and score-only passes).
        attributions: `[T, D]` per-dimension attributions, when the method has them.
        converged: False when an adaptive rule stopped above its tolerance.
    """

    token_attributions: torch.Tensor
    group_deltas: torch.Tensor | None
    num_rows: int
    attributions: torch.Tensor | None = None
    converged: bool = True

    @property
    def completeness_delta(self) -> float | None:
        """IG: the signed delta of its single group; SIG: the largest |delta|."""
        if self.group_deltas is None:
            return None
        if len(self.group_deltas) == 1:
            return float(self.group_deltas[0])
        return float(self.group_deltas.abs().max()) if len(self.group_deltas) else 0.0


@dataclasses.dataclass
class RowPlan:
    """Rows of one example in one phase: row j is (group[j], alpha[j]) with weight[j]."""

    group: torch.Tensor  # [R] long
    alpha: torch.Tensor  # [R] float
    weight: torch.Tensor | None  # [R] float; None for score-only rows


def path_attributions(
    problems: Sequence[PathProblem],
    scorer: RowScorer,
    alphas: np.ndarray,
    weights: np.ndarray,
    measure_completeness: bool = True,
    keep_dimensions: bool = False,
) -> list[PathAttribution]:
    """Integrates every group's gradients with one quadrature rule.

    Each example costs `G * n` gradient rows and, with `measure_completeness`,
    `G` (+1 unless its `input_score` is given) score-only rows.
    """
    n = len(alphas)
    assert len(weights) == n
    device = scorer.device
    alphas_t = torch.as_tensor(alphas, dtype=torch.float64, device=device)  # [n]
    weights_t = torch.as_tensor(weights, dtype=torch.float64, device=device)  # [n]
    plans = []
    for p in problems:
        G = len(p.groups)
        plans.append(
            RowPlan(torch.arange(G, device=device).repeat_interleave(n), alphas_t.repeat(G), weights_t.repeat(G))
        )
    weighted = [torch.zeros_like(p.x, dtype=accumulation_dtype(p)) for p in problems]  # each [T, D]
    for index, plan, rows, (_, grads) in evaluate_rows(problems, plans, scorer, with_grads=True):
        p = problems[index]
        dtype = accumulation_dtype(p)
        row_weights = plan.weight[rows, None].to(dtype) * p.groups[plan.group[rows]].to(dtype)  # [r, T]
        weighted[index] += torch.einsum("rt,rtd->td", row_weights, grads.to(dtype))
    ends = _endpoint_scores(problems, scorer) if measure_completeness else [(None, None)] * len(problems)
    results = []
    for p, plan, w, (input_score, baseline_scores) in zip(problems, plans, weighted, ends):
        attributions = (p.x - p.baseline).to(w.dtype) * w  # [T, D]
        token_attr = attributions.sum(-1)  # [T]
        deltas = None
        if input_score is not None:
            deltas = (input_score - baseline_scores - p.groups.to(w.dtype) @ token_attr).cpu()  # [G]
        num_rows = len(plan.group) + (len(p.groups) + _input_rows(p) if measure_completeness else 0)
        results.append(
            PathAttribution(token_attr.cpu(), deltas, num_rows, attributions.cpu() if keep_dimensions else None)
        )
    return results


def occlusion_attributions(problems: Sequence[PathProblem], scorer: RowScorer) -> list[PathAttribution]:
    """SIG's token salience in closed form: F(x) - F(x with token i at its baseline).

    Needs singleton groups (SIG's). Score-only rows: one per group, plus the input
    unless its `input_score` is given. The completeness deltas are zero by construction.
    """
    results = []
    for p, (input_score, baseline_scores) in zip(problems, _endpoint_scores(problems, scorer)):
        assert bool((p.groups.sum(-1) == 1).all()), "occlusion needs one token per group"
        token_attr = torch.zeros(p.x.shape[0], dtype=accumulation_dtype(p), device=p.x.device)  # [T]
        token_attr[p.groups.nonzero()[:, 1]] = input_score - baseline_scores  # Group g moves token t.
        G = len(p.groups)
        results.append(PathAttribution(token_attr.cpu(), torch.zeros(G, dtype=token_attr.dtype), G + _input_rows(p)))
    return results


def _endpoint_scores(problems: Sequence[PathProblem], scorer: RowScorer) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per problem: `(F(x), F(x with group g at its baseline) [G])`, float32 on the device."""
    device = scorer.device
    plans = []
    for p in problems:
        G = len(p.groups)
        extra = _input_rows(p)  # The input row: alpha 1 moves nothing.
        group = torch.cat([torch.arange(G, device=device), torch.zeros(extra, dtype=torch.long, device=device)])
        alpha = torch.cat([torch.zeros(G, device=device), torch.ones(extra, device=device)])
        plans.append(RowPlan(group, alpha, None))
    scores = [
        torch.empty(len(plan.group), dtype=accumulation_dtype(p), device=device) for p, plan in zip(problems, plans)
    ]
    kept = _KeptRows(problems, plans, scores, scorer)
    for index, todo, rows, (row_scores, _) in evaluate_rows(problems, kept.todo, scorer, with_grads=False):
        scores[index][kept.positions(index, rows)] = row_scores.to(scores[index].dtype)
        kept.record(index, todo, rows, row_scores)
    ends = []
    for p, s in zip(problems, scores):
        G = len(p.groups)
        given = p.input_score
        if given is None and G == 0:  # Nothing moves: no delta or attribution reads F(x).
            given = 0.0
        input_score = s[G] if given is None else torch.as_tensor(given, dtype=s.dtype, device=device)
        ends.append((input_score, s[:G]))
    return ends


class _KeptRows:
    """The score-only rows still to score, after those a `checkpoint` scope already holds.

    Attributes:
        todo: per problem, the plan of its rows not in the checkpoint (all rows outside a scope).
        index: per problem, `[R_todo]` where those rows sit in its whole plan (None: all rows are to do).
    """

    def __init__(
        self, problems: Sequence[PathProblem], plans: Sequence[RowPlan], scores: list[torch.Tensor], scorer: RowScorer
    ) -> None:
        self.store = checkpoint.active()
        self.todo: list[RowPlan] = list(plans)
        self.index: list[torch.Tensor | None] = [None] * len(plans)
        self.keys: list[str] = []
        if self.store is None:
            return
        for i, (p, plan) in enumerate(zip(problems, plans)):
            key = self.store.problem_key(scorer, p.key, p.x, p.baseline, p.groups)
            known, stored = self.store.lookup(key, plan.group, plan.alpha)  # [R] each, on the CPU
            scores[i][known.to(scores[i].device)] = stored[known].to(scores[i])
            todo = (~known).nonzero()[:, 0].to(plan.group.device)  # [R_todo]
            self.todo[i], self.index[i] = RowPlan(plan.group[todo], plan.alpha[todo], None), todo
            self.keys.append(key)

    def positions(self, index: int, rows: slice) -> slice | torch.Tensor:
        """Where rows `rows` of problem `index`'s todo plan sit in its whole plan."""
        return rows if self.index[index] is None else self.index[index][rows]

    def record(self, index: int, todo: RowPlan, rows: slice, row_scores: torch.Tensor) -> None:
        """Appends the scored rows to the checkpoint, if one is active."""
        if self.store is not None:
            self.store.record(self.keys[index], todo.group[rows], todo.alpha[rows], row_scores)


def _input_rows(problem: PathProblem) -> int:
    """1 if x itself must be scored: its score is not given and some group moves (else none is read)."""
    return int(problem.input_score is None and len(problem.groups) > 0)


def accumulation_dtype(problem: PathProblem) -> torch.dtype:
    """Sums are kept in float32 at least (float64 inputs stay float64)."""
    return torch.promote_types(problem.x.dtype, torch.float32)


def evaluate_rows(
    problems: Sequence[PathProblem],
    plans: Sequence[RowPlan],
    scorer: RowScorer,
    with_grads: bool,
    phase: str | None = None,
) -> Iterator[tuple[int, RowPlan, slice, tuple[torch.Tensor, torch.Tensor | None]]]:
    """Scores every planned row, longest examples first, in passes sized by the scorer.

    Rows of several examples share a pass; an example's rows may span passes. Yields
    `(problem index, its plan, the slice of its rows, (scores, grads))` per piece; tells
    `progress` the phase's rows (`phase`, else gradient or score rows) and each pass's.
    """
    order = sorted(range(len(problems)), key=lambda i: -problems[i].x.shape[0])
    phase = phase or ("gradient rows" if with_grads else "score rows")
    progress.begin(phase, sum(len(plan.group) for plan in plans))
    for pass_pieces in _passes(order, problems, plans, scorer, with_grads):
        cancellation.check()
        pieces = [(problems[i].key, _build_rows(problems[i], plans[i], rows)) for i, rows in pass_pieces]
        for (i, rows), result in zip(pass_pieces, scorer.score_rows(pieces, with_grads)):
            yield i, plans[i], rows, result
        progress.advance(sum(rows.stop - rows.start for _, rows in pass_pieces))


def _passes(
    order: list[int],
    problems: Sequence[PathProblem],
    plans: Sequence[RowPlan],
    scorer: RowScorer,
    with_grads: bool,
) -> Iterator[list[tuple[int, slice]]]:
    """Splits the planned rows into passes of at most `rows_per_pass` of the pass's longest example."""
    pending: list[tuple[int, slice]] = []
    budget = used = 0
    for i in order:
        total, start = len(plans[i].group), 0
        while start < total:
            if not pending:
                budget, used = max(1, scorer.rows_per_pass(problems[i].x.shape[0], with_grads)), 0
            take = min(total - start, budget - used)
            pending.append((i, slice(start, start + take)))
            used, start = used + take, start + take
            if used == budget:
                yield pending
                pending = []
    if pending:
        yield pending


def _build_rows(problem: PathProblem, plan: RowPlan, rows: slice) -> torch.Tensor:
    """`[r, T, D]` embeddings of the planned rows, built on the problem's device."""
    x = problem.x
    delta = x - problem.baseline  # [T, D]
    moved = ((1.0 - plan.alpha[rows])[:, None] * problem.groups[plan.group[rows]]).to(x.dtype)  # [r, T]
    return x.unsqueeze(0) - moved.unsqueeze(-1) * delta.unsqueeze(0)
