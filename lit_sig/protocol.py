"""What a LIT model may declare, beyond LIT's own specs, for lit_sig's interpreters.

Both are optional; a model that declares neither still works (zero baseline, no
completeness delta).

- An output field `TARGET_SCORE_FIELD` (`types.Scalar`): the scalar whose
  gradient the model's `TokenGradients` fields hold. With it, IG and SIG report
  their completeness delta.
- A method `baseline_embedding(embeddings_field: str, kind: str) -> np.ndarray |
  None` returning the `[emb_dim]` embedding that stands in for a word token of
  that `TokenEmbeddings` field under a baseline `kind` ("mask" or "pad"), or None
  if the model has no such token.
"""

TARGET_SCORE_FIELD = "grad_target_score"
BASELINE_METHOD = "baseline_embedding"
