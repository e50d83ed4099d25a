"""Gradient rows of a causal LM that run the input's fixed leading tokens once (IG's and SIG's rows).

No path method moves a token the input marks unmovable (`PathInput.movable`): BOS, the chat
template's markers and its system message. Before the input's first movable position `a` every
path row equals the input, so under causal attention its keys and values there are the input's.
`FixedPrefix` runs positions 0..a-1 once per input (no gradients, under the rows' autocast) and
each pass's rows from `a` on with that prefix as their KV cache, with gradients: on the 70-token
chat prompt of SmolLM2 (24 fixed leading tokens) a row runs 46 positions instead of 70.

The gradients before `a` are returned as 0. Path methods never read them: their groups hold
movable tokens only, and the engine weights each row's gradients by its group. Callers that want
the gradient at every position (`predict`'s `token_grad`) run whole rows.

Rows of inputs with the same `a` share a pass; where the model's padding is right padding (exact
for a causal LM's real positions) their tails are right-padded to the longest, else each pass holds
one length. It applies where `prefix_cache.PrefixCache` does (its check of a cached pass against an
uncached one), to rows at the word embeddings without a neuron, and not to `torch.compile`d rows.
Out of memory, the pieces not yet scored go to the whole rows (which halve their passes).
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

_KV = list[tuple[torch.Tensor, torch.Tensor]]  # Per layer: keys and values [1, heads, a, head_dim].


class FixedPrefix:
    """IG and SIG gradient rows from the input's first movable position on (see the module docstring).

    Args:
        cache: the model's `PrefixCache` (its view of the base model and head, and its check).
        precision: the gradient rows' precision (a key of `forward.PRECISIONS`).
        padding: how the model's passes mix lengths.
        head_elements: rows x targets x vocabulary logits per pass, at most.
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
        self.rows_reused = 0  # Gradient rows run from their input's first movable position.
        self.positions_skipped = 0  # Positions those rows did not run.
        self._autocast = PRECISIONS[precision]
        self._padding = padding
        self._head_elements = head_elements
        self._budget = budget
        self._prefixes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # input -> (a, keys/values)
        self._lock = threading.Lock()

    def applies(self, pieces: Sequence[rows.Piece], compiled: bool) -> bool:
        """Whether these gradient rows may skip their inputs' fixed leading positions."""
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
        """Per `(input, rows [r, T, D])`: F `[r]` and its gradients `[r, T, D]` (0 before the first movable
        position); pieces without a fixed prefix go to `whole`."""
        results: list[rows.PieceResult | None] = [None] * len(pieces)
        shared, alone = self._groups(pieces)
        if alone:
            for i, result in zip(alone, whole([pieces[i] for i in alone])):
                results[i] = result
        for start, indices in shared:
            try:
                for i, result in zip(indices, self._group_rows([pieces[i] for i in indices], start)):
                    results[i] = result
            except torch.OutOfMemoryError:
                logging.warning("Out of memory with the fixed prefix run once; whole rows instead.")
                rest = [i for i in range(len(pieces)) if results[i] is None]
                for i, result in zip(rest, whole([pieces[i] for i in rest])):
                    results[i] = result
                break
        return results

    def _groups(self, pieces: Sequence[rows.Piece]) -> tuple[list[tuple[int, list[int]]], list[int]]:
        """`([(a, indices of pieces that share a pass)], indices of pieces to run whole)`."""
        groups: dict[tuple[int, int], list[int]] = {}
        alone = []
        for i, (p, piece_rows) in enumerate(pieces):
            start, _ = self._prefix(p)
            if start == 0 or bool((piece_rows[:, :start] != p.full[:start].to(piece_rows.dtype)).any()):
                alone.append(i)  # No fixed prefix, or rows that move it (never a path method's).
                continue
            length = 0 if self._padding.mixes_lengths and self._padding.side == "right" else len(p.full)
            groups.setdefault((start, length), []).append(i)
        return [(start, indices) for (start, _), indices in groups.items()], alone

    def _prefix(self, p: rows.SequencePathInput) -> tuple[int, _KV]:
        """The input's first movable position `a` (at most its first target's) and its keys/values before it."""
        with self._lock:
            known = self._prefixes.get(p)
        if known is None:
            known = _build_prefix(self.cache.view, p, self._autocast)
            with self._lock:
                self._prefixes[p] = known
        return known

    def _group_rows(self, pieces: list[rows.Piece], start: int) -> list[rows.PieceResult]:
        """The pieces' results, in passes within the head's budget."""
        targets = max(len(p.score_ids) for p, _ in pieces)
        limit = max(1, self._head_elements // (targets * self.cache.view.head.weight.shape[0]))
        parts, results, rest = [], [], list(pieces)
        while rest:
            part, rest = rows.split_pieces(rest, limit)
            parts.extend(part)
            results.extend(self._pass(part, start))
        return rows.join_pieces(pieces, parts, results, [], [])

    def _pass(self, pieces: list[rows.Piece], start: int) -> list[rows.PieceResult]:
        """One pass over the pieces' rows from position `start` on."""
        length = max(len(p.full) for p, _ in pieces)
        tails = torch.cat([_tail(p, r, start, length) for p, r in pieces]).requires_grad_(True)  # [b, length - a, D]
        cache = transformers.DynamicCache(ddp_cache_data=_stacked_kv([(self._prefix(p)[1], len(r)) for p, r in pieces]))
        mask = None
        if any(len(p.full) < length for p, _ in pieces):
            mask = torch.cat([_real_positions(len(p.full), length, len(r), tails.device) for p, r in pieces])
        position_ids = torch.arange(start, length, device=tails.device).expand(len(tails), -1)  # [b, length - a]
        view = self.cache.view
        autocast = torch.autocast(tails.device.type, dtype=self._autocast, enabled=self._autocast is not None)
        with rows.measured(self._budget, tails.device, pieces, True):
            with autocast:
                hidden = view.base(
                    inputs_embeds=tails,
                    attention_mask=mask,
                    position_ids=position_ids,
                    use_cache=True,
                    **{prefix_cache.cache_keyword(view): cache},
                ).last_hidden_state  # [b, length - a, H]
                scores = _scores(view, pieces, hidden, start)  # [b]
            grads = torch.autograd.grad(scores.sum(), tails)[0]  # [b, length - a, D]
        self.rows_reused += len(tails)
        self.positions_skipped += len(tails) * start
        results = []
        for (p, r), part in zip(pieces, rows.piece_slices(pieces)):
            full_grads = torch.zeros_like(r)  # [r, T, D]
            full_grads[:, start : len(p.full)] = grads[part, : len(p.full) - start].to(r.dtype)
            results.append((scores[part].detach(), full_grads))
        return results


def _build_prefix(
    view: lm_score.TargetLogProbs, p: rows.SequencePathInput, autocast: torch.dtype | None
) -> tuple[int, _KV]:
    """`(a, keys/values of positions 0..a-1)` of the input (a = 0: no fixed prefix)."""
    movable = p.movable[: len(p.full)]
    first_target = int(p.score_positions.min())
    start = min(int(movable.int().argmax()) if bool(movable.any()) else 0, first_target)
    if start == 0:
        return 0, []
    device = p.full.device
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        out = view.base(inputs_embeds=p.full[None, :start], use_cache=True)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    return start, [(layer.keys, layer.values) for layer in cache.layers]


def _stacked_kv(prefixes: list[tuple[_KV, int]]) -> _KV:
    """Per layer: keys and values `[b, heads, a, head_dim]`, each input's repeated for its rows."""
    layers = len(prefixes[0][0])
    stacked = []
    for layer in range(layers):
        keys = torch.cat([kv[layer][0].expand(n, -1, -1, -1) for kv, n in prefixes])
        values = torch.cat([kv[layer][1].expand(n, -1, -1, -1) for kv, n in prefixes])
        stacked.append((keys, values))
    return stacked


def _tail(p: rows.SequencePathInput, piece_rows: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """`[r, length - a, D]`: the rows' positions a..L_p-1, zero-padded on the right to `length`."""
    tail = piece_rows[:, start : len(p.full)].detach()
    return torch.nn.functional.pad(tail, (0, 0, 0, length - len(p.full)))


def _real_positions(real: int, length: int, num_rows: int, device: torch.device) -> torch.Tensor:
    """`[r, length]` attention mask over the prefix and the tail: 1 up to `real`, 0 for the pads."""
    mask = torch.zeros(num_rows, length, dtype=torch.long, device=device)
    mask[:, :real] = 1
    return mask


def _scores(view: lm_score.TargetLogProbs, pieces: list[rows.Piece], hidden: torch.Tensor, start: int) -> torch.Tensor:
    """`[b]` float32 F of each row from the tails' hidden states `[b, length - a, H]`."""
    scores = []
    for (p, _), part in zip(pieces, rows.piece_slices(pieces)):
        picked = hidden[part][:, p.score_positions - start]  # [r, K, H]
        log_probs = lm_score.log_probs_of(view.head(picked), p.score_ids.expand(len(picked), -1))  # [r, K]
        scores.append(log_probs.sum(-1))
    return torch.cat(scores)
