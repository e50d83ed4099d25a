"""The explained score of a causal LM: the summed log-probability of chosen target tokens.

For a sequence of ids `s` and target positions `P` (each > 0), the score is

    F = sum over j in P of log p(s_j | s_0 .. s_{j-1})

read from the logits at position j - 1. Positive salience for F means support for
the target. (LIT 1.3's `transformers_lms` differentiates the loss, -F, so its
gradients have the other sign.)

An LM computes logits over the whole vocabulary at every position; F needs them
at the K positions before the targets only. `TargetLogProbs` runs the model's base
(`getattr(model, model.base_model_prefix)`, the layers up to the final norm) and
applies the output embeddings (`model.get_output_embeddings()`) to those K hidden
states. `target_log_probs_view` builds it only where, at load, it gives the full
model's own log-probabilities on a random test sequence; where it does not (a model
that changes its logits after the head: Gemma 2's soft-capping, Cohere's logit
scale), the full model runs, keeping only the logits it needs where it can
(`logits_to_keep`).
"""

import inspect
import logging

import torch
from torch import nn

RTOL_FLOAT32 = 1e-4  # Of the largest |log p|: float32 rounding is ~1e-6 of it, another function O(1).
_HALF_EPS_MULTIPLE = 32  # Half-precision weights: 32 roundings of the weights' epsilon.
_PROBE_LENGTH = 9


class TargetLogProbs(nn.Module):
    """`forward(inputs_embeds [R, L, D], ..., score_positions, score_ids, score_weights) -> F [R]`.

    `score_positions [R, K]` are the positions whose logits predict `score_ids [R, K]`
    (a target at position j is read at j - 1); `score_weights [R, K]` (1 for a target,
    0 for padding of K) weight their log-probabilities, computed in float32.

    Args:
        model: a Hugging Face causal LM.
        head_at_targets: run the base model and the head at the K positions only; else
            the full model (its logits at every position it must compute).
    """

    def __init__(self, model: nn.Module, head_at_targets: bool) -> None:
        super().__init__()
        self.model = model
        self.head_at_targets = head_at_targets
        self.base = getattr(model, model.base_model_prefix) if head_at_targets else None
        self.head = model.get_output_embeddings() if head_at_targets else None
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def log_probs(
        self,
        inputs_embeds: torch.Tensor,
        score_positions: torch.Tensor,
        score_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`[R, K]` float32 log-probabilities of `score_ids` at `score_positions`."""
        kwargs = {"attention_mask": attention_mask, "use_cache": False}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if self.head_at_targets:
            hidden = self.base(inputs_embeds=inputs_embeds, **kwargs).last_hidden_state  # [R, L, H]
            picked = _gather_positions(hidden, score_positions)  # [R, K, H]
            logits = self.head(picked)  # [R, K, V]
        else:
            length = inputs_embeds.shape[1]
            first = int(score_positions.min())  # One host read per pass: the fallback path only.
            if self._keeps_logits:
                kwargs["logits_to_keep"] = length - first
            all_logits = self.model(inputs_embeds=inputs_embeds, **kwargs).logits  # [R, L or L - first, V]
            logits = _gather_positions(all_logits, score_positions - (length - all_logits.shape[1]))  # [R, K, V]
        return log_probs_of(logits, score_ids)  # [R, K]

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        score_positions: torch.Tensor,
        score_ids: torch.Tensor,
        score_weights: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        log_probs = self.log_probs(inputs_embeds, score_positions, score_ids, attention_mask, position_ids)
        return (log_probs * score_weights).sum(-1)  # [R]


def log_probs_of(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """`[R, K]` float32 log-probabilities of `ids [R, K]` under `logits [R, K, V]`."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [R, K, V]
    return log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def _gather_positions(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """`[R, K, E]` rows of `values [R, L, E]` at `positions [R, K]`."""
    return values.gather(1, positions.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


def full_model_log_probs(model: nn.Module, inputs_embeds: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """`[B, L - 1]` float32 log p(ids[:, j] | ids[:, :j]) for j >= 1, from the model's own logits."""
    logits = model(inputs_embeds=inputs_embeds, use_cache=False).logits.float()  # [B, L, V]
    return torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]


def target_log_probs_view(model: nn.Module) -> TargetLogProbs:
    """`TargetLogProbs` with the head at the targets where it gives the model's own log-probabilities.

    Checked on a random sequence of `_PROBE_LENGTH` ids, every position a target.
    """
    if _head_at_targets_matches(model):
        return TargetLogProbs(model, head_at_targets=True)
    logging.warning(
        "%s: its base model and output embeddings do not give its own logits; the full model computes"
        " every target score.",
        type(model).__name__,
    )
    return TargetLogProbs(model, head_at_targets=False)


def _head_at_targets_matches(model: nn.Module) -> bool:
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if base is None or head is None or base is model:
        return False
    embedding = model.get_input_embeddings()
    device, dtype = embedding.weight.device, embedding.weight.dtype
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, embedding.num_embeddings, (1, _PROBE_LENGTH), generator=generator).to(device)
    with torch.inference_mode():
        embs = embedding(ids)  # [1, L, D]
        reference = full_model_log_probs(model, embs, ids)  # [1, L - 1]
        positions = torch.arange(_PROBE_LENGTH - 1, device=device)[None]  # [1, L - 1]
        try:
            ours = TargetLogProbs(model, head_at_targets=True).log_probs(embs, positions, ids[:, 1:])
        except Exception as error:  # pylint: disable=broad-except
            logging.info("%s: the head at the targets failed: %s", type(model).__name__, error)
            return False
    tolerance = _tolerance(dtype) * max(1.0, float(reference.abs().max()))
    return bool((ours - reference).abs().max() <= tolerance)


def _tolerance(dtype: torch.dtype) -> float:
    if dtype in (torch.float32, torch.float64):
        return RTOL_FLOAT32
    return _HALF_EPS_MULTIPLE * torch.finfo(dtype).eps
