"""A logits-only view of a BERT-style classifier whose last layer computes the first token only.

A BERT-style sequence classifier reads one position of its last layer: the
first token ([CLS] / <s>), through its pooler or head. Every other position of
that layer (its query, attention output, feed-forward) is computed for nothing;
only its keys and values, from the layer below, are read. `first_token_view`
returns the model with that layer computing the first token only: the same
logits (and gradients), with about 10/12 of one layer's work less per row
(~14% of a 6-layer MiniLM's pass, ~7% of BERT-base's).

The view shares the model's modules and parameters (nothing is copied); only the
containers on the way to the last layer are new, so hooks on the model fire in
the view's passes too, but hooks on the last layer or its attention do not. It is
built only where the trimmed layer gives the layer's own first-token output on
random states and the view gives the model's own logits on a padded test batch
(both run the model's hooks); an architecture it does not fit (a head that pools
every position, another layer layout) or a module whose forward was replaced on
the instance (device-map dispatch, `module.compile()`) keeps the full model.
"""

import copy
import logging

import torch
from torch import nn

_LAYER_RTOL = 1e-5  # Of the layer's largest output: float32 rounding is ~1e-7, a different layer ~1e-3.
_LOGITS_RTOL = 1e-4  # Of the largest logit: rounding is ~1e-6 of it, a head reading other positions O(1).


class FirstTokenLayer(nn.Module):
    """A BERT layer (`attention.self.{query,key,value}`, `attention.output`, `intermediate`, `output`)
    computed for the first position only: `[B, L, H]` in, `[B, 1, H]` out."""

    def __init__(self, layer: nn.Module, returns_tuple: bool) -> None:
        super().__init__()
        self.layer = layer
        self.returns_tuple = returns_tuple  # Older transformers return `(hidden_states,)` from a layer.

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs
    ) -> torch.Tensor | tuple[torch.Tensor]:
        del args, kwargs  # Caches, cross-attention, head masks: not used by an encoder classifier.
        attention = self.layer.attention.self
        B, L, _ = hidden_states.shape
        first = hidden_states[:, :1]  # [B, 1, H]
        head_size = attention.attention_head_size
        query = attention.query(first).view(B, 1, -1, head_size).transpose(1, 2)  # [B, heads, 1, d]
        key = attention.key(hidden_states).view(B, L, -1, head_size).transpose(1, 2)  # [B, heads, L, d]
        value = attention.value(hidden_states).view(B, L, -1, head_size).transpose(1, 2)  # [B, heads, L, d]
        if attention_mask is not None:
            attention_mask = attention_mask[..., :1, :]  # The first query's row: [B, 1 or heads, 1, L].
        context = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=getattr(attention, "scaling", head_size**-0.5)
        )  # [B, heads, 1, d]
        attended = self.layer.attention.output(context.transpose(1, 2).reshape(B, 1, -1), first)  # [B, 1, H]
        out = self.layer.output(self.layer.intermediate(attended), attended)  # [B, 1, H]
        return (out,) if self.returns_tuple else out


def first_token_view(model: nn.Module) -> nn.Module | None:
    """`model` with its last encoder layer computing the first token only, or None where that
    is not the same model (checked against the last layer on random states and the model's
    logits on a padded random batch)."""
    try:
        view = _build_view(model)
        if view is not None and _same_logits(model, view):
            return view
    except Exception as error:  # pylint: disable=broad-except
        logging.info("No first-token view of %s: %s", type(model).__name__, error)
    return None


def _build_view(model: nn.Module) -> nn.Module | None:
    base = getattr(model, "base_model", None)
    prefix = getattr(model, "base_model_prefix", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if base is None or base is model or not prefix or not isinstance(layers, nn.ModuleList) or not layers:
        return None
    if _dtype(model) not in (torch.float32, torch.float64):
        return None  # Half-precision weights could not tell rounding from a wrong view.
    if any(_forward_replaced(m) for m in (model, base, base.encoder)):
        return None  # A shallow copy would call the replaced forward: the full model.
    last = layers[-1]
    if not all(hasattr(last, name) for name in ("attention", "intermediate", "output")):
        return None
    if not all(hasattr(last.attention.self, name) for name in ("query", "key", "value", "attention_head_size")):
        return None
    trimmed_last = _checked_layer(last, model.config.hidden_size, _device(model), _dtype(model))
    if trimmed_last is None:
        return None
    trimmed = nn.ModuleList([*layers[:-1], trimmed_last])
    encoder = _with_child(base.encoder, "layer", trimmed)
    return _with_child(model, prefix, _with_child(base, "encoder", encoder))


def _checked_layer(last: nn.Module, hidden: int, device: torch.device, dtype: torch.dtype) -> FirstTokenLayer | None:
    """`FirstTokenLayer(last)` if it gives `last`'s own first-token output on random states."""
    states = _random((2, 7, hidden), device, dtype)  # [2, 7, H]
    with torch.inference_mode():
        full = last(states)
        returns_tuple = isinstance(full, tuple)
        first = FirstTokenLayer(last, returns_tuple)
        ours = first(states)
    if returns_tuple:
        full, ours = full[0], ours[0]
    return first if _close(ours, full[:, :1], _LAYER_RTOL) else None


def _same_logits(model: nn.Module, view: nn.Module) -> bool:
    embs = _random((3, 7, model.get_input_embeddings().embedding_dim), _device(model), _dtype(model))  # [3, 7, E]
    mask = torch.ones(3, 7, dtype=torch.long, device=embs.device)
    mask[1, 4:] = 0  # One padded row.
    with torch.inference_mode():
        return all(
            _close(
                view(inputs_embeds=embs, attention_mask=m).logits,
                model(inputs_embeds=embs, attention_mask=m).logits,
                _LOGITS_RTOL,
            )
            for m in (mask, None)
        )


def _close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float) -> bool:
    """Same shape, and equal to `rtol` of `theirs`' largest magnitude."""
    return ours.shape == theirs.shape and torch.allclose(ours, theirs, rtol=0, atol=rtol * float(theirs.abs().max()))


def _random(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Seeded standard normal values (the check is the same every time)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)


def _forward_replaced(module: nn.Module) -> bool:
    """True if the instance's forward is not its class's (Accelerate's dispatch, `module.compile()`)."""
    return "forward" in vars(module) or vars(module).get("_compiled_call_impl") is not None


def _with_child(module: nn.Module, name: str, child: nn.Module) -> nn.Module:
    """A shallow copy of `module` (same parameters, buffers and hooks) with `child` as `name`."""
    twin = copy.copy(module)
    twin._modules = dict(module._modules)  # pylint: disable=protected-access
    twin._modules[name] = child  # pylint: disable=protected-access
    return twin


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _dtype(model: nn.Module) -> torch.dtype:
    return model.get_input_embeddings().weight.dtype
