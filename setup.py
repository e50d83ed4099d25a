"""lit_sig: salience interpreters for LIT on PyTorch / Hugging Face models.

All metadata lives in pyproject.toml; this shim keeps `python setup.py ...` and
older tools working.
"""

import setuptools

setuptools.setup()
