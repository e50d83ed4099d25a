"""The model's forward pass at a precision: autocast, an optional compiled module, padding.

`ForwardRunner` is what every model family's passes go through: it calls the
module as `module(inputs_embeds=, attention_mask=, [token_type_ids=], [position_ids=])`
under `torch.autocast` at the chosen precision (or in full precision for score-only
rows), through the `torch.compile`d module when asked, one thread at a time there
(Dynamo and Inductor are not thread-safe).
"""

import contextlib
import dataclasses
import threading
from typing import Any

import torch
from torch import nn

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclasses.dataclass
class Batch:
    """Model inputs of a pass, on the device."""

    embs: torch.Tensor  # [B, L, D]
    attention_mask: torch.Tensor | None  # [B, L]; None: no padding
    token_type_ids: torch.Tensor | None = None  # [B, L]
    position_ids: torch.Tensor | None = None  # [B, L]; None: the model's default 0..L-1
    extra: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # More keyword inputs of a view.
    entry: int | None = None  # None: `embs` are word embeddings; L: the states [B, L, H] of layer L

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        kwargs = {"inputs_embeds": self.embs, "attention_mask": self.attention_mask, **self.extra}
        if self.token_type_ids is not None:
            kwargs["token_type_ids"] = self.token_type_ids
        if self.position_ids is not None:
            kwargs["position_ids"] = self.position_ids
        return kwargs


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; accepted: {list(PRECISIONS)}.")


class ForwardRunner:
    """Runs a model (or a cheaper view of it that gives the same outputs) at a precision.

    Attributes:
        model: the full module (every output: hidden states, attentions).
        view: a module that gives the same logits-only outputs with less work (or `model`).
        compiled: `torch.compile(view)`, or None.
        precision: a key of `PRECISIONS`.
    """

    def __init__(self, model: nn.Module, view: nn.Module, precision: str, torch_compile: bool) -> None:
        check_precision(precision)
        self.model = model
        self.view = view
        self.precision = precision
        self.compiled = torch.compile(view, dynamic=True) if torch_compile else None
        self._compiled_lock = threading.Lock()
        self.layer_views: Any = None  # `layers.LayerViews`, set by the device path: passes entering at a layer.

    def __call__(self, batch: Batch, full_precision: bool = False, compiled: bool = False, **outputs: bool) -> Any:
        """The forward pass over `batch`: under autocast at `precision`, unless `full_precision`.

        Without extra `outputs` (hidden states, attentions) only the logits are read, so the
        view runs (compiled, where asked and there is one).
        """
        logits_only = not any(outputs.values())
        if batch.entry is not None:  # The states of a layer: the view that enters there (eager).
            assert logits_only and self.layer_views is not None, "a pass entering at a layer gives logits only"
            return self.run(self.layer_views.view(batch.entry, None), batch, full_precision)
        use_compiled = compiled and self.compiled is not None and logits_only
        module = self.compiled if use_compiled else self.view if logits_only else self.model
        with self._compiled_lock if use_compiled else contextlib.nullcontext():
            return self.run(module, batch, full_precision, **outputs)

    def run(self, module: nn.Module, batch: Batch, full_precision: bool = False, **outputs: bool) -> Any:
        """`module` called on `batch`, under autocast at `precision` unless `full_precision`."""
        autocast_dtype = None if full_precision else PRECISIONS[self.precision]
        device_type = batch.embs.device.type
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return module(**batch.model_kwargs(), **outputs)
