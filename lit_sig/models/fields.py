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


# A causal LM's fields: LIT's prompt-debugging names (`lit_nlp/examples/prompt_debugging/constants.py`), which
# its Sequence Salience module reads, plus the embeddings and gradients lit_sig's interpreters read.
PROMPT_FIELD = "prompt"
TARGET_FIELD = "target"
TARGET_MASK_FIELD = "target_mask"
RESPONSE_FIELD = "response"
LM_TOKENS_FIELD = "tokens"  # Every token of prompt (template included) and target.
LM_EMBEDDINGS_FIELD = "input_embs"
LM_GRADIENTS_FIELD = "token_grad"
GRAD_NORM_FIELD = "grad_l2"
GRAD_DOT_INPUT_FIELD = "grad_dot_input"
