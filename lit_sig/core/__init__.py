"""Pure-torch attribution functions: no LIT, no Hugging Face."""
