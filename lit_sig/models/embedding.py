"""Encodings to a padded pass of word embeddings on the device, with given embeddings put in place."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lit_sig.models.encoding import Encoding
from lit_sig.models.forward import Batch
from lit_sig.models.padding import Padding


class Embedder:
    """Embeds padded token ids with the model's own embedding module (which may scale its rows)."""

    def __init__(self, embedding: torch.nn.Embedding, pad_id: int | None, padding: Padding) -> None:
        self.embedding = embedding
        self.pad_id = pad_id or 0
        self.padding = padding

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def token_embeddings(self, ids: Sequence[int]) -> torch.Tensor:
        """`[N, D]` float32 on the host: what the embedding module gives for these ids."""
        with torch.no_grad():
            return self.embedding(torch.tensor(list(ids), device=self.device)).float().cpu()

    def batch(
        self, encodings: Sequence[Encoding], given: Sequence[dict[int, torch.Tensor]] | None = None
    ) -> tuple[Batch, list[int]]:
        """The encodings' ids padded and embedded, and each one's offset in the pass.

        `given[b]` maps segment index -> `[T_seg, D]` embeddings that replace that segment's word
        embeddings in sequence b.
        """
        B, L = len(encodings), max(len(e) for e in encodings)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)  # [B, L]
        attention_mask = torch.zeros((B, L), dtype=torch.long)  # [B, L]
        token_type_ids = torch.zeros((B, L), dtype=torch.long)  # [B, L]
        offsets = [self.padding.offset(len(e), L) for e in encodings]
        for b, (e, start) in enumerate(zip(encodings, offsets)):
            span = slice(start, start + len(e))
            input_ids[b, span] = torch.tensor(e.input_ids)
            attention_mask[b, span] = 1
            if e.token_type_ids is not None:
                token_type_ids[b, span] = torch.tensor(e.token_type_ids)
        with torch.no_grad():
            embs = self.embedding(input_ids.to(self.device))  # [B, L, D]
        for b, replacements in enumerate(given or []):
            for segment, values in replacements.items():
                where = torch.as_tensor(encodings[b].segment_positions[segment] + offsets[b], device=self.device)
                embs[b, where] = values.to(self.device, embs.dtype)
        has_types = any(e.token_type_ids is not None for e in encodings)
        mask = attention_mask.to(self.device)
        types = token_type_ids.to(self.device) if has_types else None
        return Batch(embs, mask, types, self.padding.position_ids(mask)), offsets

    def given(self, name: str, value: Any, num_tokens: int) -> torch.Tensor:
        """`[num_tokens, D]` embeddings a caller passed in field `name`, validated."""
        D = self.embedding.embedding_dim
        value = torch.as_tensor(np.asarray(value, dtype=np.float32))
        if value.shape != (num_tokens, D):
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}; expected {(num_tokens, D)} (one row per token of the text)."
            )
        return value
