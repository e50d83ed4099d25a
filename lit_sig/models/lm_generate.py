"""A causal LM's greedy response to a prompt (at most `max_new_tokens`, special tokens dropped)."""

import copy

import torch
import transformers


def greedy_response(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    prompt_ids: list[int],
    max_new_tokens: int,
) -> str:
    """Greedy decoding of `prompt_ids` alone (no batch mates, no sampling settings of the checkpoint)."""
    config = copy.deepcopy(model.generation_config)
    config.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    ids = torch.tensor([prompt_ids], device=model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return tokenizer.decode(out[0, len(prompt_ids) :], skip_special_tokens=True)
