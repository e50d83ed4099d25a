"""What a LIT model may offer, beyond LIT's own specs, to lit_sig's interpreters.

Everything here is optional; a model that offers none of it still works through
LIT's `predict` (zero baseline, no completeness delta). The interpreters find
each capability with `find_capability`, which also looks through LIT's model
wrappers (the LIT server wraps every served model in `CachingModelWrapper`,
which passes no extra methods through).

- An output field `TARGET_SCORE_FIELD` (`types.Scalar`): the scalar whose
  gradient the model's `TokenGradients` fields hold. With it, IG and SIG report
  their completeness delta, and adaptive steps and exact SIG work.
- A method `baseline_embedding(embeddings_field: str, kind: str) -> np.ndarray |
  None` returning the `[emb_dim]` embedding that stands in for a word token of
  that `TokenEmbeddings` field under a baseline `kind` ("mask" or "pad"), or None
  if the model has no such token.
- A method `special_token_mask(tokens_field: str, tokens: list[str]) -> list[bool]`
  (`SPECIAL_TOKEN_MASK_METHOD`) saying which tokens of that `Tokens` field are special
  (True: it never moves along a path; its baseline is itself), for models without the
  device path. Without it, tokens whose text is in `lit_sig.lit.fields.SPECIAL_TOKENS`
  ([CLS], <s>, ...) stay fixed: a guess from the text, which also fixes a word that
  merely reads "<s>". The device path says it per position (`PathInput.movable`).
- An attribute `DEFAULT_BASELINE_ATTR` (`default_baseline`, a kind of `config.BASELINES`):
  the baseline the interpreters use when neither their config nor their constructor
  names one (a causal LM has no [MASK] and says `zero`).
- The device path, `DevicePathModel`: the model embeds the examples on its own
  device (`path_inputs`) and scores rows of word embeddings there
  (`rows_per_pass`, `score_rows`: `lit_sig.core.engine.RowScorer`), so that path
  rows never leave the device and rows of several examples share passes.
- Inside the model, `InsideModel` (on a device-path model): `num_layers()` and
  `inside_path_inputs(prepared, baselines, layer, neuron)`, which re-keys path
  inputs so that their rows enter at the hidden states of a layer (x and the
  baseline are that layer's states for the input and for the baseline input,
  every position included) and/or are scored by a neuron's activation. The
  config keys `Layer` and `Neuron` of lit_sig's interpreters use it.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from lit_nlp.api import types as lit_types

TARGET_SCORE_FIELD = "grad_target_score"
BASELINE_METHOD = "baseline_embedding"
SPECIAL_TOKEN_MASK_METHOD = "special_token_mask"
DEFAULT_BASELINE_ATTR = "default_baseline"
DEVICE_PATH_METHOD = "path_inputs"
INSIDE_METHOD = "inside_path_inputs"
NUM_LAYERS_METHOD = "num_layers"
_WRAPPER_DEPTH = 16  # Wrappers of wrappers, at most.


@dataclasses.dataclass(eq=False)
class PathInput:
    """One example embedded on the model's device, ready for path rows.

    Attributes:
        tokens: per embeddings field asked for, its word tokens.
        x: `[T, D]` their embeddings, fields concatenated in the order asked for.
        target: the class whose score rows are scored for; None for regression.
        input_score: `[]` that score at x (float32, on the device), or None where the
            model did not score x (it needed no prediction to know the class); the
            engine then scores x beside its other rows.
        movable: `[T]` bool, which tokens may move along a path (special tokens, a chat
            template's markers never do); None: the interpreters ask `special_token_mask`,
            else judge by the tokens' text (`lit_sig.lit.fields.SPECIAL_TOKENS`).
    """

    tokens: list[list[str]]
    x: torch.Tensor
    target: str | None
    input_score: torch.Tensor | None
    movable: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class Neuron:
    """The explained score F as a unit's activation: unit `unit` of layer `layer`'s states
    (Hugging Face's `hidden_states[layer]`), summed over the sequence's real positions, or at
    `position` (counted over the whole tokenized sequence, [CLS] = 0)."""

    layer: int
    unit: int
    position: int | None = None

    def __str__(self) -> str:
        return ":".join(str(v) for v in (self.layer, self.unit, self.position) if v is not None)


class InsideModel(Protocol):
    """A device-path model that explains at a layer's hidden states, or explains a neuron."""

    def num_layers(self) -> int | None:
        """N: the layers are 0 (what enters the first block) .. N; None if none can be entered."""

    def inside_path_inputs(
        self,
        prepared: Sequence[PathInput],
        baselines: Sequence[torch.Tensor] | None,
        layer: int | None,
        neuron: Neuron | None,
    ) -> list[tuple[PathInput, torch.Tensor | None]]:
        """Per input of `path_inputs` and its `[T, D]` baseline: the input re-keyed, and its baseline.

        `layer` None keeps x and the baseline; layer L gives the `[L_seq, H]` states of layer L for
        the input and for the baseline input, at every position (tokens then include [CLS]/[SEP]).
        `neuron` makes its activation the score. Raises ValueError naming the valid range for a
        layer, unit or position that doesn't exist.
        """


@runtime_checkable
class DevicePathModel(Protocol):
    """A model that runs IG/SIG rows on its own device (see `lit_sig.core.engine.RowScorer`)."""

    device: torch.device

    def path_inputs(
        self, inputs: Sequence[lit_types.JsonDict], classes: Sequence[str | None], embeddings_fields: Sequence[str]
    ) -> list[PathInput]:
        """Embeds `inputs` for `classes` (None: label field, else predicted); may score them at x."""

    def rows_per_pass(self, num_tokens: int, with_grads: bool) -> int:
        """Rows of `num_tokens` word tokens that one pass on the device should hold."""

    def score_rows(
        self, pieces: Sequence[tuple[PathInput, torch.Tensor]], with_grads: bool
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per `(input, rows [r, T, D])`: scores `[r]` and, `with_grads`, their gradients `[r, T, D]`.

        A model may give 0 for a row's gradient at the positions before its first change from the
        input's `x` (before its first movable token, for a row equal to `x`): the engine never reads
        them (`lit_sig.core.engine.RowScorer`). `HFCausalLM` does (`lit_sig.models.prefix_gradients`).
        """


def find_capability(model: Any, name: str) -> Any | None:
    """The attribute `name` of `model` or of a model it wraps (LIT's `.wrapped`), else None."""
    for _ in range(_WRAPPER_DEPTH):
        if model is None:
            return None
        found = getattr(model, name, None)
        if found is not None:
            return found
        model = getattr(model, "wrapped", None)
    return None


def find_device_path(model: Any) -> DevicePathModel | None:
    """The model, or a model it wraps, that offers the device path; else None."""
    for _ in range(_WRAPPER_DEPTH):
        if model is None:
            return None
        if isinstance(model, DevicePathModel):
            return model
        model = getattr(model, "wrapped", None)
    return None
