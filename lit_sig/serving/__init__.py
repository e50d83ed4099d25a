"""The hardened, bounded, offline LIT server and the demo that wires a model and data to it."""
