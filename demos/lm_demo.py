"""Offline LIT demo for language models from a checkout: `python -m demos.lm_demo [--model DIR] [--port 5432]`.

The installed twin is the `lit-sig-lm-demo` console script; both run `lit_sig.serving.lm_demo`
and take the same flags.
"""

from lit_sig.serving.lm_demo import SEQUENCE_SALIENCE_LAYOUT, lm_interpreters, main

__all__ = ["SEQUENCE_SALIENCE_LAYOUT", "lm_interpreters", "main"]

if __name__ == "__main__":
    main()
