"""Deprecated alias of `lit_sig.cli.explain` (moved there): `python -m lit_sig.explain` still runs it."""

import sys
import warnings

from lit_sig.cli import explain as _moved

if __name__ == "__main__":
    _moved.main()
else:
    warnings.warn("lit_sig.explain moved to lit_sig.cli.explain", DeprecationWarning, stacklevel=2)
    sys.modules[__name__] = _moved
