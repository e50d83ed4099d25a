"""lit_sig: salience interpreters for LIT on PyTorch / Hugging Face models.

The names a notebook needs, imported on first use so that `import lit_sig`
stays light (no torch, LIT, matplotlib or pandas until you use them)::

    import lit_sig

    model = lit_sig.minilm_sst2()  # or lit_sig.HFSequenceClassifier.from_pretrained(path, labels=[...])
    result = lit_sig.SequentialIntegratedGradients().run([{"sentence": "Not bad at all."}], model)[0]
    lit_sig.render(result["token_grad_sentence"].tokens, result["token_grad_sentence"].salience)

Interpreters (LIT components): `GradientNorm`, `GradientDotInput`,
`IntegratedGradients`, `SequentialIntegratedGradients`. Models:
`HFSequenceClassifier` (any Hugging Face PyTorch sequence classifier),
`HFCausalLM` (any Hugging Face causal LM: generation, and salience of a target's
log-probability) and `minilm_sst2` (the embedded SST-2 sentiment model). Figures: `render` (an
HTML heatmap) and `plot` (a matplotlib figure). Inside the model: the config keys
`Layer` and `Neuron`, and `layer_sweep` (every token's salience at every layer; its
`plot()` is `plot_layers`, a tokens x layers heatmap).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Cheap (numpy; matplotlib loads on the first call). Imported here, not lazily, so that the
# functions, not the `lit_sig.render` module, stay bound to these names.
from lit_sig.render import plot, plot_layers, render

__version__ = "0.1.0"  # The one place: pyproject.toml reads it (tool.setuptools.dynamic).

# Public name -> the module that defines it.
_LAZY = {
    "GradientNorm": "lit_sig.lit.interpreters",
    "GradientDotInput": "lit_sig.lit.interpreters",
    "IntegratedGradients": "lit_sig.lit.interpreters",
    "SequentialIntegratedGradients": "lit_sig.lit.interpreters",
    "HFSequenceClassifier": "lit_sig.models",
    "HFCausalLM": "lit_sig.models",
    "minilm_sst2": "lit_sig.models",
    "layer_sweep": "lit_sig.lit.sweep",
}

__all__ = [
    "GradientDotInput",
    "GradientNorm",
    "HFCausalLM",
    "HFSequenceClassifier",
    "IntegratedGradients",
    "SequentialIntegratedGradients",
    "__version__",
    "layer_sweep",
    "minilm_sst2",
    "plot",
    "plot_layers",
    "render",
]

if TYPE_CHECKING:  # For type checkers and IDEs; at run time these load on first use.
    from lit_sig.lit.interpreters import (
        GradientDotInput,
        GradientNorm,
        IntegratedGradients,
        SequentialIntegratedGradients,
    )
    from lit_sig.lit.sweep import layer_sweep
    from lit_sig.models import HFCausalLM, HFSequenceClassifier, minilm_sst2


def __getattr__(name: str) -> Any:
    """Imports a public name's module on first use (PEP 562) and caches the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lit_sig' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
