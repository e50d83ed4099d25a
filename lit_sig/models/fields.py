"""The names of the LIT fields lit_sig's model wrappers read and write, built in one place."""

LABEL_FIELD = "label"
POOLED_FIELD = "mean_pooled_emb"  # The last layer's hidden states, averaged over the tokens.
TRUNCATED_FIELD = "truncated"


def tokens_field(segment: str) -> str:
    """The output field of a text segment's word pieces (`Tokens`)."""
    return f"tokens_{segment}"


def embeddings_field(segment: str) -> str:
    """The input and output field of a segment's word-token embeddings (`TokenEmbeddings`)."""
    return f"input_embs_{segment}"


def gradients_field(segment: str) -> str:
    """The output field of the gradients of the target score for a segment's tokens (`TokenGradients`)."""
    return f"token_grad_{segment}"


def attention_field(layer: int) -> str:
    """The output field of block `layer`'s attention heads (1-based, as LIT's examples name them)."""
    return f"layer_{layer}/attention"
