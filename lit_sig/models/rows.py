"""The device path's rows: put word-embedding rows back into whole sequences, pad them, size passes.

The engine hands a scorer pieces `(input, rows [r, T, D])`: rows of the word tokens
of one input. `rows_batch` puts each row back into its input's whole sequence
(special tokens and every fixed position included) and pads the pieces into one
pass as the model's `Padding` says; `piece_slices`, `split_pieces` and `join_pieces`
find, split and join the pieces' rows in a pass (for out-of-memory halving);
`DeviceRowBudget` sizes passes on CUDA from measured memory.
"""

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from lit_sig.lit import protocol
from lit_sig.models.forward import Batch
from lit_sig.models.padding import Padding


@dataclasses.dataclass(eq=False)
class SequencePathInput(protocol.PathInput):
    """A `PathInput` plus what a wrapper needs to put word-embedding rows back in place."""

    full: torch.Tensor = None  # [L, D] every token's embedding, specials included
    positions: torch.Tensor = None  # [T] where the word tokens sit in `full`
    token_type_ids: torch.Tensor | None = None  # [L]
    sequence_tokens: list[str] | None = None  # [L] every token of the sequence, specials included
    entry: int | None = None  # None: rows are word embeddings; L: rows are layer L's states at every position
    neuron: protocol.Neuron | None = None  # F is this unit's activation (None: the family's own score)


Piece = tuple[SequencePathInput, torch.Tensor]  # An input and rows [r, T, D] of its word embeddings.
PieceResult = tuple[torch.Tensor, torch.Tensor | None]  # Their scores [r] and gradients [r, T, D].


def rows_batch(pieces: Sequence[Piece], padding: Padding, mask_optional: bool) -> Batch:
    """Model inputs for the pieces' rows, each in its whole sequence, padded to the longest.

    A pass without padding gets no attention mask where the model allows it (`mask_optional`:
    None means every position attends), which spares a Hugging Face model its own all-ones
    check, a host synchronization per pass.
    """
    length = max(len(p.full) for p, _ in pieces)
    assert padding.mixes_lengths or all(len(p.full) == length for p, _ in pieces), "one length per pass"
    padded = not mask_optional or any(len(p.full) < length for p, _ in pieces)
    embs = torch.cat([_place_rows(p, rows, length, padding) for p, rows in pieces])  # [R, L, D]
    mask = None
    if padded:
        mask = torch.cat(
            [_repeat(padding.pad(torch.ones_like(p.full[:, 0], dtype=torch.long), length), len(r)) for p, r in pieces]
        )  # [R, L]
    types = None
    if pieces[0][0].token_type_ids is not None:
        types = torch.cat([_repeat(padding.pad(p.token_type_ids, length), len(r)) for p, r in pieces])  # [R, L]
    entry = pieces[0][0].entry
    assert all(p.entry == entry for p, _ in pieces), "one entry layer per pass"
    return Batch(embs, mask, types, padding.position_ids(mask), entry=entry)


def scatter_grads(pieces: Sequence[Piece], grads: torch.Tensor, padding: Padding) -> list[torch.Tensor]:
    """Per piece, `[r, T, D]` gradients at its word positions, from `[R, L, D]` gradients of a pass."""
    length = grads.shape[1]
    parts = []
    for (p, _), rows in zip(pieces, piece_slices(pieces)):
        parts.append(grads[rows][:, padding.offset(len(p.full), length) + p.positions])
    return parts


def _repeat(values: torch.Tensor, rows: int) -> torch.Tensor:
    return values.expand(rows, *values.shape)


def _place_rows(p: SequencePathInput, rows: torch.Tensor, length: int, padding: Padding) -> torch.Tensor:
    """`[r, length, D]`: the input's full embeddings with `rows` `[r, T, D]` at its word positions."""
    block = p.full.expand(len(rows), -1, -1).clone()  # [r, L_p, D]
    block[:, p.positions] = rows.to(block.dtype)
    return padding.pad(block.transpose(0, 1), length).transpose(0, 1)


def piece_slices(pieces: Sequence[tuple[object, torch.Tensor]]) -> list[slice]:
    """Each piece's rows in the concatenated pass."""
    bounds = np.cumsum([0] + [len(rows) for _, rows in pieces])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def count_rows(pieces: Sequence[Piece]) -> int:
    return sum(len(rows) for _, rows in pieces)


def measured(
    budget: "DeviceRowBudget | None", device: torch.device, pieces: Sequence[Piece], with_grads: bool
) -> contextlib.AbstractContextManager[None]:
    """A context that measures the pass over `pieces` for `budget` (nothing without one)."""
    if budget is None:
        return contextlib.nullcontext()
    return budget.measure(device, max(len(p.full) for p, _ in pieces), with_grads, count_rows(pieces))


def split_pieces(pieces: Sequence[Piece], first_rows: int) -> tuple[list[Piece], list[Piece]]:
    """Splits pieces into two lists holding `first_rows` rows and the rest."""
    first, second, taken = [], [], 0
    for p, rows in pieces:
        take = min(len(rows), max(0, first_rows - taken))
        if take:
            first.append((p, rows[:take]))
        if take < len(rows):
            second.append((p, rows[take:]))
        taken += take
    return first, second


def join_pieces(
    pieces: Sequence[Piece],
    first: Sequence[Piece],
    first_results: Sequence[PieceResult],
    second: Sequence[Piece],
    second_results: Sequence[PieceResult],
) -> list[PieceResult]:
    """Joins the results of split pieces back, one per original piece."""
    merged = []
    queue = list(zip(first, first_results)) + list(zip(second, second_results))
    position = 0
    for _, rows in pieces:
        scores, grads, count = [], [], 0
        while count < len(rows):
            (_, part), (s, g) = queue[position]
            scores.append(s)
            grads.append(g)
            count += len(part)
            position += 1
        merged.append((torch.cat(scores), None if grads[0] is None else torch.cat(grads)))
    return merged


class DeviceRowBudget:
    """Rows per pass on a CUDA device: measured once per length and direction, then remembered.

    The first pass at a length (bucketed by 16 tokens) holds `probe_rows`; its
    peak memory gives bytes per row, and later passes hold as many rows as fit
    in `memory_fraction` of the memory free then, at most `max_rows`.
    """

    def __init__(
        self, free_bytes: Callable[[], int], max_rows: int = 1024, probe_rows: int = 64, memory_fraction: float = 0.5
    ) -> None:
        self._free_bytes = free_bytes  # () -> int
        self._max_rows = max_rows
        self._probe_rows = probe_rows
        self._fraction = memory_fraction
        self._rows: dict[tuple[int, bool], int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(length: int, with_grads: bool) -> tuple[int, bool]:
        return (-(-length // 16) * 16, with_grads)

    def rows(self, length: int, with_grads: bool) -> int:
        with self._lock:
            return self._rows.get(self._key(length, with_grads), self._probe_rows)

    def needs_measure(self, length: int, with_grads: bool) -> bool:
        with self._lock:
            return self._key(length, with_grads) not in self._rows

    def observe(self, length: int, with_grads: bool, rows: int, peak_bytes: int) -> None:
        per_row = max(1, peak_bytes) / max(1, rows)
        fit = int(self._fraction * self._free_bytes() / per_row)
        with self._lock:
            self._rows[self._key(length, with_grads)] = max(1, min(self._max_rows, fit))

    @contextlib.contextmanager
    def measure(self, device: torch.device, length: int, with_grads: bool, rows: int) -> Iterator[None]:
        """Measures the peak memory of the pass run inside, where this length and direction has none yet."""
        if not self.needs_measure(length, with_grads):
            yield
            return
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
        yield
        self.observe(length, with_grads, rows, torch.cuda.max_memory_allocated(device) - start_bytes)

    def shrink(self, length: int, with_grads: bool, rows: int) -> None:
        with self._lock:
            self._rows[self._key(length, with_grads)] = max(1, rows // 2)
