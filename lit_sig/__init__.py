"""lit_sig: salience interpreters for LIT on PyTorch / Hugging Face models."""

from lit_sig.interpreters import GradientDotInput
from lit_sig.interpreters import GradientNorm
from lit_sig.interpreters import IntegratedGradients
from lit_sig.interpreters import SequentialIntegratedGradients
from lit_sig.render import plot
from lit_sig.render import render

__all__ = [
    "GradientDotInput",
    "GradientNorm",
    "IntegratedGradients",
    "SequentialIntegratedGradients",
    "plot",
    "render",
]
