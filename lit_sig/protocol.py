"""Deprecated alias of `lit_sig.lit.protocol` (moved there); importing it warns."""

import sys
import warnings

from lit_sig.lit import protocol as _moved

warnings.warn("lit_sig.protocol moved to lit_sig.lit.protocol", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
