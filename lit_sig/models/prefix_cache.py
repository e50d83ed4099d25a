"""Score-only rows of a causal LM that reuse the unmodified prompt's keys and values (exact SIG's rows).

Exact SIG scores one row per movable token i: the input with token i at its baseline.
Under causal attention the positions before i are those of the unmodified input, so
their keys and values are too. `PrefixCache` runs the input once with the model's
KV cache (Hugging Face `DynamicCache`), then scores a block of rows whose first changed
position is at least `a` by running only positions a..L-1 on the cache truncated to
`a` (expanded to the block's rows, position ids a..L-1), the LM head at the target
positions only. A row costs L - a positions instead of L: about half on exact SIG's
rows of a long prompt. The input's own row (nothing changed) is read from the cached
pass.

It applies to score-only rows at the embeddings (not at a layer, not a neuron's
activation) of a model whose head runs at the targets (`lm_score.TargetLogProbs`)
and whose cache holds every position of every layer (no sliding window), checked on
first use: a cached pass must give the uncached log-probabilities (the tolerance of
`lm_score`). Elsewhere `applies` is False and the plain rows run; `reason` says why,
and `rows_reused` / `rows_plain` count the rows scored each way (`positions`: the positions the reused ones ran).
"""

import inspect
import threading
import weakref
from collections.abc import Callable, Sequence

import torch
import transformers
from absl import logging

from lit_sig.models import lm_score, rows

_PROBE_LENGTH = 9
# A piece's rows, sorted by their first changed position, run in at most this many blocks, each of at least
# MIN_BLOCK_ROWS rows: a pass of few short rows streams every weight for little work (on one CPU thread 1-row
# blocks of ~20 positions took as long as 8 whole 70-token rows).
BLOCKS_PER_PIECE = 8
MIN_BLOCK_ROWS = 8


class PrefixCache:
    """Score-only rows through the prompt's KV cache (see the module docstring).

    Args:
        view: the model's `TargetLogProbs` (its base model and head).
        head_rows: rows per head call at K targets: `head_elements // (K * vocabulary)`.
    """

    def __init__(self, view: lm_score.TargetLogProbs, head_elements: int) -> None:
        self.view = view
        self.enabled = True  # Users and benchmarks may turn the reuse off (then the plain rows run).
        self.rows_reused = 0
        self.rows_plain = 0
        self.positions = 0  # Positions the reused rows ran (the prompts' cached passes included).
        self._head_elements = head_elements
        self._verified: bool | None = None  # None: not checked yet.
        self.reason = "" if view.head_at_targets else "the full model computes the logits (no head at the targets)"
        self._caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # input -> _InputCache
        self._lock = threading.Lock()

    def applies(self, pieces: Sequence[rows.Piece], with_grads: bool) -> bool:
        """Whether these rows go through the cache; counts the rows scored the plain way otherwise."""
        usable = (
            self.enabled
            and not with_grads
            and self.view.head_at_targets
            and all(p.entry is None and p.neuron is None for p, _ in pieces)
            and self.verified()
        )
        if not usable and not with_grads:
            self.rows_plain += rows.count_rows(pieces)
        return usable

    def score_rows(
        self, pieces: Sequence[rows.Piece], plain: Callable[[Sequence[rows.Piece]], list[rows.PieceResult]]
    ) -> list[rows.PieceResult]:
        """Per `(input, rows [r, T, D])`: F `[r]` (float32) and no gradients. Out of device memory, the pieces
        not yet scored go to `plain` (whole rows, which halve their passes)."""
        results = []
        with torch.inference_mode():
            for index, (p, piece_rows) in enumerate(pieces):
                try:
                    scores = self._piece_scores(p, piece_rows[:, : len(p.full)])
                except torch.OutOfMemoryError:
                    logging.warning("Out of memory with the prompt's keys/values reused; whole rows instead.")
                    self._caches.clear()
                    rest = pieces[index:]
                    self.rows_plain += rows.count_rows(rest)
                    return results + plain(rest)
                results.append((scores, None))
                self.rows_reused += len(piece_rows)
        return results

    def _piece_scores(self, p: rows.SequencePathInput, piece_rows: torch.Tensor) -> torch.Tensor:
        """`[r]` F of rows `[r, L, D]` of one input."""
        cached = self._input_cache(p)
        length = piece_rows.shape[1]
        changed = (piece_rows != p.full.unsqueeze(0).to(piece_rows.dtype)).any(-1)  # [r, L]
        first = torch.where(changed.any(-1), changed.int().argmax(-1), length)  # [r] first changed position
        first = first.clamp(max=cached.first_score_position).cpu()  # One host read per piece.
        scores = torch.empty(len(piece_rows), dtype=torch.float32, device=piece_rows.device)
        order = torch.argsort(first, stable=True)
        block = max(MIN_BLOCK_ROWS, -(-len(order) // BLOCKS_PER_PIECE))
        head_rows = max(1, self._head_elements // (len(p.score_ids) * self.view.head.weight.shape[0]))
        for start in range(0, len(order), min(block, head_rows)):
            chosen = order[start : start + min(block, head_rows)]
            self.positions += len(chosen) * max(0, length - int(first[chosen[0]]))
            block_scores = _block_scores(
                self.view, cached, piece_rows[chosen], int(first[chosen[0]]), p.score_positions, p.score_ids
            )
            scores[chosen.to(scores.device)] = block_scores
        return scores

    def _input_cache(self, p: rows.SequencePathInput) -> "_InputCache":
        with self._lock:
            cached = self._caches.get(p)
        if cached is None:
            cached = _InputCache.build(self.view, p.full, p.score_positions, p.score_ids)
            self.positions += len(p.full)
            with self._lock:
                self._caches[p] = cached
        return cached

    def verified(self) -> bool:
        """Whether the cached passes give the uncached log-probabilities (checked once, on a random input)."""
        if self._verified is None:
            self._verified, why = _cache_matches(self.view)
            if not self._verified:
                self.reason = why
                logging.warning("%s: prefix reuse is off (%s); exact SIG runs whole rows.", _name(self.view), why)
        return self._verified


class _InputCache:
    """An input's keys and values at every layer (`[1, heads, L, head_dim]` each) and its own F."""

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]], score: torch.Tensor, first_score: int):
        self.kv = kv
        self.score = score  # 0-d float32
        self.first_score_position = first_score

    @classmethod
    def build(
        cls, view: lm_score.TargetLogProbs, full: torch.Tensor, positions: torch.Tensor, ids: torch.Tensor
    ) -> "_InputCache":
        """One cached pass over `full` `[L, D]`; raises ValueError where the cache is not per-position."""
        with torch.inference_mode():
            hidden, kv = cached_pass(view, full[None].float())
        score = summed_log_probs(view.head(hidden[:, positions]), ids)[0]
        return cls(kv, score, int(positions[0]))


def cached_pass(
    view: lm_score.TargetLogProbs, embs: torch.Tensor
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The base model over `embs` `[1, L, D]` with its KV cache, in the caller's grad mode and autocast: the
    hidden states `[1, L, H]` and every layer's keys and values `[1, heads, L, head_dim]`.

    Raises:
        ValueError: the cache is not a `DynamicCache` of plain per-position layers.
    """
    out = view.base(inputs_embeds=embs, use_cache=True)
    cache = out.cache if getattr(out, "cache", None) is not None else getattr(out, "past_key_values", None)
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, transformers.DynamicCache) or not layers:
        raise ValueError(f"the model returned {type(cache).__name__}, not a DynamicCache")
    if any(type(layer) is not transformers.cache_utils.DynamicLayer for layer in layers):
        raise ValueError("a layer's cache is not a plain DynamicLayer (sliding window or other)")
    return out.last_hidden_state, [(layer.keys, layer.values) for layer in layers]


def _block_scores(
    view: lm_score.TargetLogProbs,
    cached: _InputCache,
    block_rows: torch.Tensor,
    start: int,
    positions: torch.Tensor,
    ids: torch.Tensor,
) -> torch.Tensor:
    """`[b]` F (targets `ids [K]` read at `positions [K]`, all >= `start`) of rows `[b, L, D]` that equal the
    cached input before position `start`."""
    length = block_rows.shape[1]
    b = len(block_rows)
    if start >= length:  # Nothing changed: the input's own score.
        return cached.score.expand(b)
    cache = None
    if start > 0:
        cache = transformers.DynamicCache(
            ddp_cache_data=[
                (k[:, :, :start].expand(b, -1, -1, -1), v[:, :, :start].expand(b, -1, -1, -1)) for k, v in cached.kv
            ]
        )
    position_ids = torch.arange(start, length, device=block_rows.device).expand(b, -1)  # [b, L - start]
    hidden = view.base(
        inputs_embeds=block_rows[:, start:].float(),
        **{cache_keyword(view): cache},
        position_ids=position_ids,
        use_cache=cache is not None,
    ).last_hidden_state  # [b, L - start, H]
    picked = hidden[:, positions - start]  # [b, K, H]
    return summed_log_probs(view.head(picked), ids)


def summed_log_probs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """`[b]` F: the summed log-probabilities of `ids [K]` under `logits [b, K, V]`."""
    return lm_score.log_probs_of(logits, ids.expand(len(logits), -1)).sum(-1)


def _cache_matches(view: lm_score.TargetLogProbs) -> tuple[bool, str]:
    """Scores changed rows of a random input through the cache and whole; `(equal, why not)`."""
    embedding = view.model.get_input_embeddings()
    device = embedding.weight.device
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, embedding.num_embeddings, (_PROBE_LENGTH,), generator=generator).to(device)
    positions = torch.arange(_PROBE_LENGTH // 2, _PROBE_LENGTH - 1, device=device)  # [K]
    targets = ids[positions + 1]
    with torch.inference_mode():
        full = embedding(ids).float()  # [L, D]
        changed = full.expand(2, -1, -1).clone()  # [2, L, D]: one row changed at 2 and 3, one at 3
        changed[:, 3] = 0.0
        changed[0, 2] = 0.0
        try:
            cached = _InputCache.build(view, full, positions, targets)
            ours = torch.cat(
                [
                    _block_scores(view, cached, changed, 2, positions, targets),
                    _block_scores(view, cached, changed[1:], 3, positions, targets),
                ]
            )
        except (ValueError, TypeError, RuntimeError, AttributeError) as error:
            return False, f"a cached pass failed: {error}"
        hidden = view.base(inputs_embeds=changed, use_cache=False).last_hidden_state  # [2, L, H]
        reference = summed_log_probs(view.head(hidden[:, positions]), targets)  # [2]
        reference = torch.cat([reference, reference[1:]])
        own_hidden = view.base(inputs_embeds=full[None], use_cache=False).last_hidden_state  # [1, L, H]
        own = summed_log_probs(view.head(own_hidden[:, positions]), targets)
    tolerance = lm_score.RTOL_FLOAT32 * max(1.0, float(reference.abs().max()))
    error = max(float((ours - reference).abs().max()), float((cached.score - own[0]).abs()))
    if error > tolerance:
        return False, f"a cached pass differs from the uncached one by {error:.3g} (tolerance {tolerance:.3g})"
    return True, ""


def cache_keyword(view: lm_score.TargetLogProbs) -> str:
    """The base model's keyword for a KV cache: `cache` (transformers >= 5.24), else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(view.base.forward).parameters else "past_key_values"


def _name(view: lm_score.TargetLogProbs) -> str:
    return type(view.model).__name__
