"""lit_sig: salience interpreters for LIT on PyTorch / Hugging Face models."""

from lit_sig.interpreters import GradientDotInput
from lit_sig.interpreters import GradientNorm
from lit_sig.interpreters import IntegratedGradients
from lit_sig.interpreters import SequentialIntegratedGradients

__all__ = [
    "GradientDotInput",
    "GradientNorm",
    "IntegratedGradients",
    "SequentialIntegratedGradients",
]
