"""Deprecated alias of `lit_sig.cli.faithfulness` (moved there): `python -m lit_sig.faithfulness` still runs it."""

import sys
import warnings

from lit_sig.cli import faithfulness as _moved

if __name__ == "__main__":
    _moved.main()
else:
    warnings.warn("lit_sig.faithfulness moved to lit_sig.cli.faithfulness", DeprecationWarning, stacklevel=2)
    sys.modules[__name__] = _moved
