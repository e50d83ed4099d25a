"""Offline LIT demo from a checkout: `python -m demos.glue_demo [--data dev.tsv] [--port 5432]`.

The installed twin is the `lit-sig-demo` console script; both run `lit_sig.serving.demo`
and take the same flags.
"""

from lit_sig.serving.demo import SALIENCE_LAYOUT, lit_sig_interpreters, main

__all__ = ["SALIENCE_LAYOUT", "lit_sig_interpreters", "main"]

if __name__ == "__main__":
    main()
