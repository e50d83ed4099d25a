"""LIT adapters: the interpreters, the protocol they ask of models, and the captum bridge."""
