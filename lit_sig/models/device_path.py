"""The device path shared by lit_sig's model families (`lit_sig.lit.protocol.DevicePathModel`).

`DevicePath` scores the engine's rows on the model's device: it puts each piece's
rows back into whole sequences (`rows.rows_batch`), runs one pass (forward, and
backward for gradient rows), measures memory on CUDA to size later passes, halves
a pass on out-of-memory, and, for models whose padded passes differ from unpadded
ones, runs one pass per sequence length. A family supplies only `_row_scores`:
the explained score of every row of a pass. Explanations inside the model (rows
at a layer's states, a neuron's activation as the score: `inside`) come with it.
"""

from collections.abc import Sequence

import torch

from lit_sig.lit import protocol
from lit_sig.models import backoff, fingerprint, inside, rows
from lit_sig.models.forward import Batch, ForwardRunner
from lit_sig.models.layers import LayerViews
from lit_sig.models.padding import Padding


class DevicePath:
    """`rows_per_pass`, `score_rows` and `forward_rows` over a `ForwardRunner`.

    Subclasses set the attributes in `__init__` (via `_init_device_path`) and define
    `_row_scores`.
    """

    device: torch.device
    runner: ForwardRunner
    padding: Padding
    layer_views: LayerViews

    def _init_device_path(
        self,
        device: torch.device,
        runner: ForwardRunner,
        padding: Padding,
        mask_optional: bool,
        max_minibatch_size: int,
        max_minibatch_tokens: int,
        max_rows_per_pass: int | None,
        special_tokens: int,
    ) -> None:
        """`special_tokens`: tokens of a sequence that are not word tokens, for sizing passes by length."""
        self.device, self.runner, self.padding = device, runner, padding
        self.layer_views = LayerViews(runner.model, runner.view, padding)
        runner.layer_views = self.layer_views
        self._mask_optional = mask_optional
        self._max_minibatch_size = max_minibatch_size
        self._max_minibatch_tokens = max_minibatch_tokens
        self._max_rows_per_pass = max_rows_per_pass
        self._special_tokens = special_tokens
        self._row_budget = None
        if device.type == "cuda" and max_rows_per_pass is None:
            self._row_budget = rows.DeviceRowBudget(lambda: torch.cuda.mem_get_info(device)[0])
        self._halving = backoff.Halving(self._score_groups, _count, _split, _join, device, on_halve=self._shrink_budget)

    def _row_scores(self, pieces: Sequence[rows.Piece], batch: Batch, with_grads: bool) -> torch.Tensor:
        """`[R]` float32 explained scores of the pass's rows (differentiable to `batch.embs`)."""
        raise NotImplementedError

    def model_fingerprint(self) -> bytes:
        """A digest of the model's class, weights and buffers (`lit_sig.core.checkpoint`)."""
        return fingerprint.weights_digest(self.runner.model)

    def score_fingerprint(self, key: rows.SequencePathInput) -> bytes:
        """Bytes that change whenever F of `key`'s rows could besides the weights (`lit_sig.core.checkpoint`):
        the precision and score settings, and the key's inputs of F (targets, positions, entry layer)."""
        settings = f"{type(self).__qualname__} {self.runner.precision} {self._score_settings()}".encode()
        return settings + fingerprint.value_bytes(key)

    def _score_settings(self) -> str:
        """The family's settings of F that its keys do not hold (a classifier's logit or probability)."""
        return ""

    def num_layers(self) -> int | None:
        """N: layers 0..N can be entered or hold a neuron (`protocol.InsideModel`); None: no layer."""
        return self.layer_views.num_layers

    def inside_path_inputs(
        self,
        prepared: Sequence[rows.SequencePathInput],
        baselines: Sequence[torch.Tensor] | None,
        layer: int | None,
        neuron: protocol.Neuron | None,
    ) -> list[tuple[rows.SequencePathInput, torch.Tensor | None]]:
        """`path_inputs` re-keyed for a layer and/or a neuron (see `protocol.InsideModel`)."""
        return inside.inside_inputs(
            self.layer_views, self.runner, self.padding, self._mask_optional, prepared, baselines, layer, neuron
        )

    def _pass_scores(self, pieces: Sequence[rows.Piece], batch: Batch, with_grads: bool) -> torch.Tensor:
        """`[R]` scores of a pass: the neuron's activation where the pieces ask for one, else the family's."""
        neuron = inside.neuron_of(pieces)
        if neuron is None:
            return self._row_scores(pieces, batch, with_grads)
        return inside.neuron_scores(self.layer_views, self.runner, self.padding, pieces, batch, neuron, with_grads)

    def rows_per_pass(self, num_tokens: int, with_grads: bool) -> int:
        """Rows of `num_tokens` word tokens per pass: sized to free memory on CUDA."""
        length = num_tokens + self._special_tokens
        if self._max_rows_per_pass is not None:
            return self._max_rows_per_pass
        if self._row_budget is not None:
            return self._row_budget.rows(length, with_grads)
        return max(1, min(self._max_minibatch_size, self._max_minibatch_tokens // length))

    def score_rows(self, pieces: Sequence[rows.Piece], with_grads: bool) -> list[rows.PieceResult]:
        """Per `(input, rows [r, T, D])`: scores `[r]` and, `with_grads`, gradients `[r, T, D]`."""
        return self._halving((list(pieces), with_grads))

    def forward_rows(self, pieces: Sequence[rows.Piece]) -> list[torch.Tensor]:
        """Per `(input, rows [r, T, D])`: scores `[r]` that autograd can differentiate back to `rows`.

        For libraries that take a forward function (captum); one pass per length, no retry.
        """
        results: list[torch.Tensor | None] = [None] * len(pieces)
        for group in self._length_groups(pieces):
            chosen = [pieces[i] for i in group]
            scores = self._pass_scores(chosen, rows.rows_batch(chosen, self.padding, self._mask_optional), True)
            for i, part in zip(group, rows.piece_slices(chosen)):
                results[i] = scores[part]
        return results

    def _length_groups(self, pieces: Sequence[rows.Piece]) -> list[list[int]]:
        """Indices of the pieces that may share a pass: all, or those of one sequence length."""
        if self.padding.mixes_lengths:
            return [list(range(len(pieces)))]
        groups: dict[int, list[int]] = {}
        for i, (p, _) in enumerate(pieces):
            groups.setdefault(len(p.full), []).append(i)
        return list(groups.values())

    def _score_groups(self, work: tuple[list[rows.Piece], bool]) -> list[rows.PieceResult]:
        pieces, with_grads = work
        results: list[rows.PieceResult | None] = [None] * len(pieces)
        for group in self._length_groups(pieces):
            for i, result in zip(group, self._score_pass([pieces[i] for i in group], with_grads)):
                results[i] = result
        return results

    def _score_pass(self, pieces: list[rows.Piece], with_grads: bool) -> list[rows.PieceResult]:
        with rows.measured(self._row_budget, self.device, pieces, with_grads), torch.inference_mode(not with_grads):
            batch = rows.rows_batch(pieces, self.padding, self._mask_optional)
            if with_grads:
                batch.embs.requires_grad_(True)
            scores = self._pass_scores(pieces, batch, with_grads)  # [R]
            grads = torch.autograd.grad(scores.sum(), batch.embs)[0] if with_grads else None  # [R, L, D]
        parts = rows.piece_slices(pieces)
        piece_grads = rows.scatter_grads(pieces, grads, self.padding) if grads is not None else [None] * len(pieces)
        return [(scores[part].detach(), g) for part, g in zip(parts, piece_grads)]

    def _shrink_budget(self, work: tuple[list[rows.Piece], bool], total: int) -> None:
        pieces, with_grads = work
        if self._row_budget is not None:
            self._row_budget.shrink(max(len(p.full) for p, _ in pieces), with_grads, total)


_Work = tuple[list[rows.Piece], bool]  # Pieces, and whether their gradients are wanted.


def _count(work: _Work) -> int:
    return rows.count_rows(work[0])


def _split(work: _Work, first_rows: int) -> tuple[_Work, _Work]:
    first, rest = rows.split_pieces(work[0], first_rows)
    return (first, work[1]), (rest, work[1])


def _join(
    work: _Work, first: _Work, first_results: list[rows.PieceResult], rest: _Work, rest_results: list[rows.PieceResult]
) -> list[rows.PieceResult]:
    return rows.join_pieces(work[0], first[0], first_results, rest[0], rest_results)
