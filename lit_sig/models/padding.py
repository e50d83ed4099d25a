"""How sequences of different lengths share a pass, chosen by what the model does.

A row's score in a shared pass must equal its score alone. Encoders with right
padding and an attention mask satisfy that. Hugging Face's decoder
`*ForSequenceClassification` heads read the last *non-pad* token, which they find
from `input_ids`; called with `inputs_embeds` they cannot see the padding and read
the last position, so right padding gives them a pad's hidden state. Left padding,
with the position ids the unpadded call would use, puts every sequence's last
token at the last position. A causal LM's logits at every real position are compared
(`[L, V]`): under causal attention pads after a sequence never reach it, so right padding
is exact there.

`choose_padding` tries right padding, then left padding, on a test batch of two
random sequences of different lengths, against each sequence alone; where neither
reproduces the unpadded logits, passes never mix lengths (always exact, fewer rows
per pass). A model that cannot be called with `inputs_embeds` at all gets a
`ValueError` naming it.
"""

import dataclasses
import logging

import torch
from torch import nn

_PROBE_LENGTHS = (7, 4)
_RTOL_FLOAT32 = 1e-4  # Of the largest logit: padding changes float32 rounding (~1e-6); a wrong position O(1).
_HALF_EPS_MULTIPLE = 32  # Half-precision weights: 32 roundings of the weights' epsilon.


@dataclasses.dataclass(frozen=True)
class Padding:
    """Where pads go in a shared pass, and whether sequences of different lengths may share one.

    Attributes:
        side: "right" (pads after the tokens) or "left" (before; position ids then count
            from each sequence's first token).
        mixes_lengths: False when no padding reproduces the unpadded scores: every pass then
            holds sequences of one length (no pads at all).
    """

    side: str = "right"
    mixes_lengths: bool = True

    def offset(self, length: int, padded_length: int) -> int:
        """Where a sequence of `length` tokens starts in a pass padded to `padded_length`."""
        return padded_length - length if self.side == "left" else 0

    def pad(self, values: torch.Tensor, padded_length: int) -> torch.Tensor:
        """`[L, ...]` values zero-padded along their first dimension to `[padded_length, ...]`."""
        extra = padded_length - len(values)
        widths = [0, 0] * (values.dim() - 1) + ([extra, 0] if self.side == "left" else [0, extra])
        return nn.functional.pad(values, widths)

    def position_ids(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """`[B, L]` position ids for left padding (each sequence counts from its first token), else None."""
        if self.side != "left" or attention_mask is None:
            return None
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def describe(self) -> str:
        return f"{self.side} padding" if self.mixes_lengths else "one length per pass"


RIGHT = Padding("right")
LEFT = Padding("left")
UNMIXED = Padding("right", mixes_lengths=False)


def choose_padding(model: nn.Module) -> Padding:
    """The first of right and left padding whose padded test batch gives each sequence's own
    logits, else `UNMIXED`; raises ValueError if the model can't run on `inputs_embeds`."""
    embedding = model.get_input_embeddings()
    device, dtype = embedding.weight.device, embedding.weight.dtype
    generator = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, embedding.num_embeddings, (n,), generator=generator) for n in _PROBE_LENGTHS]
    with torch.inference_mode():
        sequences = [embedding(i.to(device)) for i in ids]  # each [L_i, D]
        try:
            ones = [torch.ones(1, len(s), dtype=torch.long, device=device) for s in sequences]
            alone = [
                model(inputs_embeds=s[None], attention_mask=m).logits[0].float() for s, m in zip(sequences, ones)
            ]  # each [C] or [L_i, V]
        except Exception as error:  # pylint: disable=broad-except
            raise ValueError(
                f"{type(model).__name__} cannot be called with inputs_embeds ({type(error).__name__}: {error});"
                " lit_sig needs a model whose forward takes inputs_embeds= and attention_mask=."
            ) from error
        limit = tolerance(dtype) * max(1.0, max(float(a.abs().max()) for a in alone))
        for padding in (RIGHT, LEFT):
            logits = _padded_logits(model, sequences, padding)
            if logits is not None and _max_difference(logits, alone, padding) <= limit:
                return padding
    logging.warning(
        "%s gives other logits for a padded sequence than for the sequence alone, with right and with left"
        " padding; its passes will hold one length each.",
        type(model).__name__,
    )
    return UNMIXED


def _max_difference(padded: torch.Tensor, alone: list[torch.Tensor], padding: Padding) -> float:
    """The largest difference between each sequence's logits in the padded pass and alone.

    Logits per position (a causal LM's `[L_i, V]`) are compared at the sequence's own positions.
    """
    differences = []
    for row, reference in zip(padded, alone):
        if reference.dim() == 2:
            start = padding.offset(len(reference), len(row))
            row = row[start : start + len(reference)]
        differences.append(float((row - reference).abs().max()))
    return max(differences)


def _padded_logits(model: nn.Module, sequences: list[torch.Tensor], padding: Padding) -> torch.Tensor | None:
    """`[2, C]` (or `[2, L, V]`) logits of the sequences in one pass padded as `padding` says, or None if
    the call fails."""
    length = max(len(s) for s in sequences)
    embs = torch.stack([padding.pad(s, length) for s in sequences])  # [2, L, D]
    mask = torch.stack(
        [padding.pad(torch.ones(len(s), dtype=torch.long, device=s.device), length) for s in sequences]
    )  # [2, L]
    position_ids = padding.position_ids(mask)
    kwargs = {} if position_ids is None else {"position_ids": position_ids}
    try:
        return model(inputs_embeds=embs, attention_mask=mask, **kwargs).logits.float()
    except Exception as error:  # pylint: disable=broad-except
        logging.info("%s with %s failed: %s", type(model).__name__, padding.describe(), error)
        return None


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of a model's outputs whose weights are in `dtype` (of the largest output)."""
    if dtype in (torch.float32, torch.float64):
        return _RTOL_FLOAT32
    return _HALF_EPS_MULTIPLE * torch.finfo(dtype).eps
