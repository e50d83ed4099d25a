"""lit_sig's LIT interpreters: what each computes. The plumbing lives beside this module.

They find their fields from the model's specs as LIT's `gradient_maps.py` does,
so they work with any LIT model that declares `TokenGradients` aligned to
`Tokens` and (for IG and SIG) `TokenEmbeddings` in both its input and output
specs. See `lit_sig.lit.protocol` for the optional extras they use.

- `lit_sig.lit.config`: the config keys, their parser and the settings they make.
- `lit_sig.lit.fields`: the model's fields, baselines, and salience as LIT types.
- `lit_sig.lit.gradients`: interpreters of one pass's gradients.
- `lit_sig.lit.paths`: IG and SIG over the engine (`lit_sig.core.engine`).
- `lit_sig.lit.predict_path`: rows through a model's `predict` (no device path).
"""

import torch
from lit_nlp.api import dataset as lit_dataset
from lit_nlp.api import model as lit_model

from lit_sig.core import attribution, quadrature
from lit_sig.lit.config import (
    ADAPTIVE_KEY,
    BASELINE_KEY,
    BASELINES,
    CLASS_KEY,
    DEFAULT_BASELINE,
    DEFAULT_METHOD,
    DEFAULT_STEPS,
    EMBEDDINGS_LAYER,
    EXACT_METHOD,
    INTERPOLATION_KEY,
    LAYER_KEY,
    MAX_TOLERANCE,
    METHOD_KEY,
    MIN_TOLERANCE,
    NEURON_KEY,
    NORMALIZATION_KEY,
    TOLERANCE_KEY,
    PathSettings,
)
from lit_sig.lit.fields import (
    SPECIAL_TOKENS,
    GradField,
    baseline_embeddings,
    find_grad_fields,
    requested_class,
    scores_to_salience,
)
from lit_sig.lit.gradients import GradientInterpreter
from lit_sig.lit.paths import COMPLETENESS_KEY, TOLERANCE_MET_KEY, PathInterpreter

# The public names, as users and tests know them (the config keys and field helpers are re-exported).
__all__ = [
    "ADAPTIVE_KEY",
    "BASELINES",
    "BASELINE_KEY",
    "CLASS_KEY",
    "COMPLETENESS_KEY",
    "DEFAULT_BASELINE",
    "DEFAULT_METHOD",
    "DEFAULT_STEPS",
    "EMBEDDINGS_LAYER",
    "EXACT_METHOD",
    "INTERPOLATION_KEY",
    "LAYER_KEY",
    "MAX_TOLERANCE",
    "METHOD_KEY",
    "MIN_TOLERANCE",
    "NEURON_KEY",
    "NORMALIZATION_KEY",
    "SPECIAL_TOKENS",
    "TOLERANCE_KEY",
    "TOLERANCE_MET_KEY",
    "GradField",
    "GradientDotInput",
    "GradientNorm",
    "IntegratedGradients",
    "PathSettings",
    "SequentialIntegratedGradients",
    "baseline_embeddings",
    "find_grad_fields",
    "requested_class",
    "scores_to_salience",
]


class GradientNorm(GradientInterpreter):
    """Salience = L2 norm of each token's gradient."""

    signed = False

    def _token_scores(self, grads: torch.Tensor, embs: torch.Tensor | None, field: str) -> torch.Tensor:
        del embs, field
        return attribution.gradient_norm(grads)


class GradientDotInput(GradientInterpreter):
    """Salience = gradient . input embedding, per token."""

    def _token_scores(self, grads: torch.Tensor, embs: torch.Tensor | None, field: str) -> torch.Tensor:
        if embs is None:
            raise ValueError(f"{field} declares no TokenEmbeddings output (grad_for).")
        return attribution.gradient_dot_input(grads, embs)

    def is_compatible(self, model: lit_model.Model, dataset: lit_dataset.Dataset) -> bool:
        del dataset
        return any(f.embs for f in find_grad_fields(model, need_input_embs=False))


class IntegratedGradients(PathInterpreter):
    """IG: all word tokens move together from the baseline to the input.

    Unlike LIT 1.3's IG, the quadrature is exact for low-degree polynomials
    (Gauss-Legendre by default), the baseline defaults to [MASK], special tokens
    stay fixed, and completeness is measured.
    """

    def _groups(self, movable: torch.Tensor) -> torch.Tensor:
        return attribution.ig_groups(movable)


class SequentialIntegratedGradients(PathInterpreter):
    """SIG (Enguehard 2023): IG once per word token, moving that token alone.

    `Integration method: exact` gives SIG's token salience in closed form: summed
    over the embedding, token i's SIG is the integral of dF/da along a path on
    which only token i moves, so it equals F(x) - F(x with token i at its
    baseline). That costs T + 1 forward passes and no backward pass;
    `Interpolation steps` don't apply, and the completeness delta is 0 by
    construction.
    """

    methods = (*quadrature.METHODS, EXACT_METHOD)

    def _groups(self, movable: torch.Tensor) -> torch.Tensor:
        return attribution.sig_groups(movable)
