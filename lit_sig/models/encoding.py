"""Tokenization for the model wrappers: one example's ids and where its text segments sit.

`TextEncoder` wraps a fast Hugging Face tokenizer with a lock (tokenizers are not
thread-safe across calls that change truncation) and an LRU cache (the interpreters
encode the same inputs several times per request). `length_batches` groups
encodings of similar length into minibatches bounded in examples and padded tokens.
"""

import dataclasses
import functools
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import transformers
from absl import logging

_CACHE_SIZE = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class Encoding:
    """One example's token ids, and where each text segment's word tokens sit."""

    input_ids: list[int]  # [T_full], special tokens included
    token_type_ids: list[int] | None  # [T_full] or None
    segment_positions: list[np.ndarray]  # per segment: [T_seg] int positions in input_ids
    segment_tokens: list[list[str]]  # per segment: T_seg word pieces
    truncated: bool

    def __len__(self) -> int:
        return len(self.input_ids)


class TextEncoder:
    """Encodes tuples of text segments with a fast tokenizer, cached and thread-safe."""

    def __init__(self, tokenizer: transformers.PreTrainedTokenizerBase, max_length: int) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("lit_sig's model wrappers need a fast (Rust) tokenizer.")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._lock = threading.Lock()
        self.encode = functools.lru_cache(maxsize=_CACHE_SIZE)(self._encode)

    def _encode(self, texts: tuple[str, ...]) -> Encoding:
        with self._lock:
            encoding = self.tokenizer(*texts, truncation=False)
            full_length = len(encoding["input_ids"])
            truncated = full_length > self.max_length
            if truncated:
                encoding = self.tokenizer(*texts, truncation=True, max_length=self.max_length)
        if truncated:
            logging.warning("Input of %d tokens truncated to the model's maximum of %d.", full_length, self.max_length)
        sequence_ids = np.array([-1 if s is None else s for s in encoding.sequence_ids(0)])
        input_ids = list(encoding["input_ids"])
        positions = [np.flatnonzero(sequence_ids == s) for s in range(len(texts))]
        tokens = self.tokenizer.convert_ids_to_tokens(input_ids)
        return Encoding(
            input_ids=input_ids,
            token_type_ids=list(encoding["token_type_ids"]) if "token_type_ids" in encoding else None,
            segment_positions=positions,
            segment_tokens=[[tokens[p] for p in pos] for pos in positions],
            truncated=truncated,
        )


def texts_of(example: dict[str, Any], text_fields: Sequence[str]) -> tuple[str, ...]:
    """The example's text segments, validated: each field present, a string, not blank."""
    texts = []
    for f in text_fields:
        if f not in example:
            raise ValueError(f"Input is missing the text field {f!r}; expected fields: {list(text_fields)}.")
        text = example[f]
        if not isinstance(text, str):
            raise ValueError(f"Field {f!r} must be a string, got {type(text).__name__}.")
        if not text.strip():
            raise ValueError(f"Field {f!r} is empty; give at least one word.")
        texts.append(text)
    return tuple(texts)


def length_batches(
    lengths: Sequence[int], max_size: int, max_tokens: int, mix_lengths: bool = True
) -> Iterator[list[int]]:
    """Indices into `lengths` in minibatches of similar length, shortest first.

    A minibatch holds at most `max_size` examples and `max_tokens` padded tokens (a
    single longer example still runs alone); with `mix_lengths=False` every
    minibatch holds one length only (for models whose padded passes differ).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    start = 0
    while start < len(order):
        end = start + 1
        while (
            end < len(order)
            and end - start < max_size
            and (end + 1 - start) * lengths[order[end]] <= max_tokens
            and (mix_lengths or lengths[order[end]] == lengths[order[start]])
        ):
            end += 1
        yield order[start:end]
        start = end
