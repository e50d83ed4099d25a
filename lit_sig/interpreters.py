"""Deprecated alias of `lit_sig.lit.interpreters` (moved there); importing it warns."""

import sys
import warnings

from lit_sig.lit import interpreters as _moved

warnings.warn("lit_sig.interpreters moved to lit_sig.lit.interpreters", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
