"""Gradient rows of a causal LM that start where they first differ from the input (IG's and SIG's rows).

Under causal attention the positions before a row's first change `s` are the input's, and so are
their keys and values. `PrefixGradients` runs the input once per input (no gradients, under the
rows' autocast) for its keys and values, and each row from `s` on with those before `s` as its KV
cache, with gradients. SIG's row for token i starts at i, about halving path SIG's positions on a
long prompt; IG's rows start at the first token that moves, after BOS, the chat template's markers
and its system message (24 of the 70 tokens of SmolLM2's chat prompt in `benchmarks.lm_speed`).
A row equal to the input (alpha 1) starts at the input's first movable token.

The gradients before a row's start come back as 0. Path methods never read them: the engine
weights a row's gradient at token j by whether its group moves j and multiplies the sum by
x_j - b_j, and a row with alpha < 1 equals the input at j only where its group does not move j or
where b_j = x_j. Callers that want the gradient at every position (`predict`'s `token_grad`) run
whole rows.

A pass's rows, sorted by start, run in blocks as `prefix_cache` runs exact SIG's (each block from
its first row's start), rows of several inputs in one block right-padded to the longest where the
model's padding is right padding (exact for a causal LM's real positions), else one length per
block. It applies where `prefix_cache.PrefixCache` does (its check of a cached pass against an
uncached one), to rows at the word embeddings without a neuron, and not to `torch.compile`d rows.
Out of memory, the pass goes to whole rows (which halve their passes).
"""

import threading
import weakref
from collections.abc import Callable, Sequence

import torch
import transformers
from absl import logging

from lit_sig.models import lm_score, prefix_cache, rows
from lit_sig.models.forward import PRECISIONS
from lit_sig.models.padding import Padding

_KV = list[tuple[torch.Tensor, torch.Tensor]]  # Per layer: keys and values [1, heads, L, head_dim].
_Segment = tuple[int, torch.Tensor]  # A piece's index and which of its rows `[n]` (long, on the CPU).


class _InputState:
    """An input's keys and values at every position, its first movable position and its first target's."""

    def __init__(self, kv: _KV, first_movable: int, first_score: int):
        self.kv = kv
        self.first_movable = first_movable
        self.first_score = first_score


class PrefixGradients:
    """IG and SIG gradient rows from each row's first change on (see the module docstring).

    Args:
        cache: the model's `PrefixCache` (its view of the base model and head, and its check).
        precision: the gradient rows' precision (a key of `forward.PRECISIONS`).
        padding: how the model's passes mix lengths.
        head_elements: rows x targets x vocabulary logits per block, at most.
        budget: the device path's row budget on CUDA (None elsewhere): passes here are measured for it.
    """

    def __init__(
        self,
        cache: prefix_cache.PrefixCache,
        precision: str,
        padding: Padding,
        head_elements: int,
        budget: rows.DeviceRowBudget | None,
    ):
        self.cache = cache
        self.enabled = True  # Users and benchmarks may turn it off (then whole rows run).
        self.rows_reused = 0  # Gradient rows run from their start.
        self.positions_skipped = 0  # Positions before those starts, not run.
        self._autocast = PRECISIONS[precision]
        self._mixes = padding.mixes_lengths and padding.side == "right"
        self._head_elements = head_elements
        self._budget = budget
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # input -> _InputState
        self._lock = threading.Lock()

    def applies(self, pieces: Sequence[rows.Piece], compiled: bool) -> bool:
        """Whether these gradient rows may start at their first change."""
        return (
            self.enabled
            and not compiled
            and self.cache.view.head_at_targets
            and all(p.entry is None and p.neuron is None and p.movable is not None for p, _ in pieces)
            and self.cache.verified()
        )

    def score_rows(
        self, pieces: Sequence[rows.Piece], whole: Callable[[Sequence[rows.Piece]], list[rows.PieceResult]]
    ) -> list[rows.PieceResult]:
        """Per `(input, rows [r, T, D])`: F `[r]` and its gradients `[r, T, D]`, 0 before each row's start."""
        pieces = list(pieces)
        try:
            with rows.measured(self._budget, pieces[0][1].device, pieces, True):
                return self._pass(pieces)
        except torch.OutOfMemoryError:
            logging.warning("Out of memory with rows started at their first change; whole rows instead.")
            return whole(pieces)

    def _pass(self, pieces: list[rows.Piece]) -> list[rows.PieceResult]:
        states = [self._state(p) for p, _ in pieces]
        starts = [_row_starts(p, r, s) for (p, r), s in zip(pieces, states)]  # each [r] on the CPU
        scores = [torch.empty(len(r), dtype=torch.float32, device=r.device) for _, r in pieces]
        grads = [torch.zeros_like(r) for _, r in pieces]  # each [r, T, D]; 0 from the last target on
        for start, segments in self._blocks(pieces, starts):
            block_scores, block_grads = self._block(pieces, states, segments, start)
            for (i, chosen), part in zip(segments, _slices(segments)):
                on_device = chosen.to(scores[i].device)
                scores[i][on_device] = block_scores[part]
                end = len(pieces[i][0].full)
                grads[i][on_device, start:end] = block_grads[part, : end - start].to(grads[i].dtype)
            self.rows_reused += sum(len(chosen) for _, chosen in segments)
            self.positions_skipped += start * sum(len(chosen) for _, chosen in segments)
        return list(zip(scores, grads))

    def _state(self, p: rows.SequencePathInput) -> _InputState:
        with self._lock:
            known = self._states.get(p)
        if known is None:
            known = _input_state(self.cache.view, p, self._autocast)
            with self._lock:
                self._states[p] = known
        return known

    def _blocks(self, pieces: list[rows.Piece], starts: list[torch.Tensor]) -> list[tuple[int, list[_Segment]]]:
        """The pass's rows sorted by start, in blocks: `(the block's start, its rows per piece)`."""
        groups: dict[int, list[int]] = {}  # Pieces that may share a block: all, or those of one length.
        for i, (p, _) in enumerate(pieces):
            groups.setdefault(0 if self._mixes else len(p.full), []).append(i)
        blocks = []
        for chosen in groups.values():
            piece_of = torch.cat([torch.full((len(starts[i]),), i) for i in chosen])  # [R]
            row_of = torch.cat([torch.arange(len(starts[i])) for i in chosen])  # [R]
            start_of = torch.cat([starts[i] for i in chosen])  # [R]
            order = torch.argsort(start_of, stable=True)
            size = min(self._block_rows(len(order)), self._head_rows(pieces))
            for first in range(0, len(order), size):
                block = order[first : first + size]
                segments = [(int(i), row_of[block][piece_of[block] == i]) for i in piece_of[block].unique()]
                blocks.append((int(start_of[block[0]]), segments))
        return blocks

    @staticmethod
    def _block_rows(num_rows: int) -> int:
        return max(prefix_cache.MIN_BLOCK_ROWS, -(-num_rows // prefix_cache.BLOCKS_PER_PIECE))

    def _head_rows(self, pieces: list[rows.Piece]) -> int:
        targets = max(len(p.score_ids) for p, _ in pieces)
        return max(1, self._head_elements // (targets * self.cache.view.head.weight.shape[0]))

    def _block(
        self, pieces: list[rows.Piece], states: list[_InputState], segments: list[_Segment], start: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """F `[b]` and the gradients `[b, length - s, D]` of a block's rows, run from position `s` on."""
        length = max(len(pieces[i][0].full) for i, _ in segments)
        device = pieces[0][1].device
        tails = torch.cat([_tail(pieces[i], chosen.to(device), start, length) for i, chosen in segments])
        tails.requires_grad_(True)  # [b, length - s, D]
        cache = None
        if start > 0:
            cache = transformers.DynamicCache(ddp_cache_data=_stacked_kv(states, segments, start))
        mask = None
        if any(len(pieces[i][0].full) < length for i, _ in segments):
            mask = torch.cat([_real_positions(len(pieces[i][0].full), length, len(c), device) for i, c in segments])
        position_ids = torch.arange(start, length, device=device).expand(len(tails), -1)  # [b, length - s]
        view = self.cache.view
        autocast = torch.autocast(device.type, dtype=self._autocast, enabled=self._autocast is not None)
        with torch.enable_grad(), autocast:
            hidden = view.base(
                inputs_embeds=tails,
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=cache is not None,
                **{prefix_cache.cache_keyword(view): cache},
            ).last_hidden_state  # [b, length - s, H]
            scores = _scores(view, [pieces[i][0] for i, _ in segments], _slices(segments), hidden, start)  # [b]
            return scores.detach(), torch.autograd.grad(scores.sum(), tails)[0]


def _input_state(view: lm_score.TargetLogProbs, p: rows.SequencePathInput, autocast: torch.dtype | None) -> _InputState:
    """The input's keys and values (one pass, no gradients, under the rows' autocast) and its first positions."""
    movable = p.movable[: len(p.full)]
    first_score = int(p.score_positions.min())
    first_movable = min(int(movable.int().argmax()) if bool(movable.any()) else first_score, first_score)
    device = p.full.device
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        _, kv = prefix_cache.cached_pass(view, p.full[None])
    return _InputState(kv, first_movable, first_score)


def _row_starts(p: rows.SequencePathInput, piece_rows: torch.Tensor, state: _InputState) -> torch.Tensor:
    """`[r]` each row's first position that differs from the input (the first movable one where none
    does), at most the first target's: one host read."""
    changed = (piece_rows[:, : len(p.full)] != p.full.unsqueeze(0).to(piece_rows.dtype)).any(-1)  # [r, L]
    first = torch.where(changed.any(-1), changed.int().argmax(-1), state.first_movable)
    return first.clamp(max=state.first_score).cpu()


def _slices(segments: list[_Segment]) -> list[slice]:
    """Each segment's rows in its block."""
    return rows.piece_slices([(None, chosen) for _, chosen in segments])


def _stacked_kv(states: list[_InputState], segments: list[_Segment], start: int) -> _KV:
    """Per layer: keys and values `[b, heads, s, head_dim]` of positions before `s`, each input's repeated for
    its rows in the block."""
    stacked = []
    for layer in range(len(states[0].kv)):
        keys = [states[i].kv[layer][0][:, :, :start].expand(len(c), -1, -1, -1) for i, c in segments]
        values = [states[i].kv[layer][1][:, :, :start].expand(len(c), -1, -1, -1) for i, c in segments]
        stacked.append((torch.cat(keys), torch.cat(values)))
    return stacked


def _tail(piece: rows.Piece, chosen: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """`[n, length - s, D]`: the chosen rows' positions s..L_p-1, zero-padded on the right to `length`."""
    p, piece_rows = piece
    tail = piece_rows[chosen, start : len(p.full)].detach()
    return torch.nn.functional.pad(tail, (0, 0, 0, length - len(p.full)))


def _real_positions(real: int, length: int, num_rows: int, device: torch.device) -> torch.Tensor:
    """`[n, length]` attention mask over the cached and the run positions: 1 up to `real`, 0 for the pads."""
    mask = torch.zeros(num_rows, length, dtype=torch.long, device=device)
    mask[:, :real] = 1
    return mask


def _scores(
    view: lm_score.TargetLogProbs,
    inputs: list[rows.SequencePathInput],
    parts: list[slice],
    hidden: torch.Tensor,
    start: int,
) -> torch.Tensor:
    """`[b]` float32 F of each row from the run positions' hidden states `[b, length - s, H]`."""
    picked = [hidden[part][:, p.score_positions - start] for p, part in zip(inputs, parts)]  # each [n, K, H]
    return torch.cat([prefix_cache.summed_log_probs(view.head(h), p.score_ids) for p, h in zip(inputs, picked)])
