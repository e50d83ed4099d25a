"""Tokenization of a causal LM's `prompt` and `target`, and which of their tokens may move.

The prompt (wrapped in the model's chat template where asked) is tokenized with the
tokenizer's special tokens (BOS), the target on its own without them, and the two
id lists are concatenated: the target's tokens are exactly those of its text, so a
target span never merges with the prompt's last token.

A token may move along an attribution path (`movable`) when it is text the caller
wrote (the prompt's content or the target) and not a special token: BOS, EOS and
the chat template's markers and role names never move. The prompt's characters are
found in the templated text by rendering the template around a sentinel; where the
template changes the content (strips or rewrites it), only special tokens are held.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import transformers

from lit_sig.models.encoding import Encoding, TextEncoder
from lit_sig.models.fields import PROMPT_FIELD, TARGET_MASK_FIELD

_SENTINEL = "\x00lit_sig_prompt\x00"


@dataclasses.dataclass(frozen=True, eq=False)
class PromptEncoding(Encoding):
    """A prompt and target: `segment_positions` / `segment_tokens` hold [prompt, target].

    Attributes (besides `Encoding`'s):
        tokens: `[L]` every token, cleaned for display as LIT's `transformers_lms` does.
        prompt_length: tokens of the prompt, template included; the target follows.
        movable: `[L]` bool, see the module docstring.
    """

    tokens: list[str] = None
    prompt_length: int = 0
    movable: np.ndarray = None

    @property
    def target_ids(self) -> list[int]:
        return self.input_ids[self.prompt_length :]


def clean_token(token: str) -> str:
    """A word piece as LIT's prompt-debugging models show it (byte-level and SentencePiece markers)."""
    return token.replace("Ċ", "\n").replace("Ġ", "▁").replace("<0x0A>", "\n")


class PromptEncoder(TextEncoder):
    """Encodes `(prompt, target)` pairs (cached, thread-safe); `encode(("prompt", ""))` for no target.

    Args:
        tokenizer: a fast tokenizer.
        max_length: the longest sequence (prompt and target) the model takes.
        chat_template: wrap the prompt as the user's message in the tokenizer's chat template,
            with the assistant's generation prompt after it.
        system_prompt: the system message of the chat template (None: the template's default).
    """

    def __init__(
        self,
        tokenizer: transformers.PreTrainedTokenizerBase,
        max_length: int,
        chat_template: bool = False,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__(tokenizer, max_length)
        if chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"chat_template=True but {type(tokenizer).__name__} has no chat template; pass"
                " chat_template=False or a tokenizer with one."
            )
        if system_prompt is not None and not chat_template:
            raise ValueError("system_prompt needs chat_template=True.")
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self._special_ids = frozenset(tokenizer.all_special_ids)

    def _messages(self, content: str) -> list[dict[str, str]]:
        messages = [{"role": "user", "content": content}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def prompt_text(self, prompt: str) -> tuple[str, tuple[int, int] | None, bool]:
        """`(text to tokenize, the prompt's character span in it or None, whether to add special tokens)`."""
        if not self.chat_template:
            return prompt, (0, len(prompt)), True
        render = lambda content: self.tokenizer.apply_chat_template(  # noqa: E731
            self._messages(content), tokenize=False, add_generation_prompt=True
        )
        text = render(prompt)
        before, sentinel, after = render(_SENTINEL).partition(_SENTINEL)
        span = (len(before), len(before) + len(prompt)) if sentinel and text == before + prompt + after else None
        # The template writes its own BOS where the model wants one (as `apply_chat_template(tokenize=True)`).
        return text, span, False

    def _encode(self, texts: tuple[str, str]) -> PromptEncoding:
        prompt, target = texts
        text, span, special = self.prompt_text(prompt)
        with self._lock:
            encoded = self.tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
            target_ids = list(self.tokenizer(target, add_special_tokens=False)["input_ids"]) if target else []
        prompt_ids = list(encoded["input_ids"])
        input_ids = prompt_ids + target_ids
        if len(input_ids) > self.max_length:
            raise ValueError(
                f"The prompt and target have {len(input_ids)} tokens ({len(prompt_ids)} + {len(target_ids)});"
                f" the model takes at most {self.max_length}. Shorten the prompt."
            )
        movable = np.ones(len(input_ids), dtype=bool)
        movable[: len(prompt_ids)] = _inside(encoded["offset_mapping"], span)
        movable &= np.array([i not in self._special_ids for i in input_ids], dtype=bool)
        pieces = self.tokenizer.convert_ids_to_tokens(input_ids)
        L, P = len(input_ids), len(prompt_ids)
        return PromptEncoding(
            input_ids=input_ids,
            token_type_ids=None,
            segment_positions=[np.arange(P), np.arange(P, L)],
            segment_tokens=[pieces[:P], pieces[P:]],
            truncated=False,
            tokens=[clean_token(t) for t in pieces],
            prompt_length=P,
            movable=movable,
        )


def _inside(offsets: Sequence[tuple[int, int]], span: tuple[int, int] | None) -> np.ndarray:
    """`[P]` bool: whether each token's characters overlap `span` (all True when span is None)."""
    if span is None:
        return np.ones(len(offsets), dtype=bool)
    start, end = span
    return np.array([a < end and b > start for a, b in offsets], dtype=bool)


def prompt_text(example: dict[str, Any]) -> str:
    prompt = example.get(PROMPT_FIELD)
    if not isinstance(prompt, str):
        raise ValueError(f"Input needs a string field {PROMPT_FIELD!r}; got {type(prompt).__name__}.")
    if not prompt.strip():
        raise ValueError(f"Field {PROMPT_FIELD!r} is empty; give at least one word.")
    return prompt


def selected_targets(mask: Any, encoding: PromptEncoding) -> np.ndarray:
    """`[K]` positions (ascending, >= 1) of the target tokens F sums: `mask`'s, else the whole target."""
    L = len(encoding)
    if mask is None:
        selected = np.arange(max(encoding.prompt_length, 1), L)
        if not len(selected):
            raise ValueError("Nothing to explain: the target is empty.")
        return selected
    mask = np.asarray(mask, dtype=np.float64).reshape(-1)
    if len(mask) != L:
        raise ValueError(
            f"{TARGET_MASK_FIELD} has {len(mask)} entries; expected {L}, one per token of the prompt and target."
        )
    if not np.isfinite(mask).all():
        raise ValueError(f"{TARGET_MASK_FIELD} holds a NaN or infinite value.")
    selected = np.flatnonzero(mask[1:] != 0) + 1  # The first token is never predicted.
    if not len(selected):
        raise ValueError(f"{TARGET_MASK_FIELD} selects no token after the first; nothing to explain.")
    return selected


def model_max_length(config: Any) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048
