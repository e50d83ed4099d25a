"""Inside the model: views that enter its blocks at a layer's hidden states, or stop at one.

Layer i is numbered as in Hugging Face's `hidden_states`: 0 is what enters the first
block (the embedding module's output), i >= 1 the output of block i. (Hugging Face
ties its last entry to `last_hidden_state`, which is after the final norm where a
model has one, e.g. Llama or GPT-2; lit_sig's layer N is block N's own output, before
that norm, as captum's layer methods on that block see it. Below N they agree, and
the tests check it.)

The blocks and the views that enter or stop at a layer are in `lit_sig.models.segments`.
`LayerViews.view` builds and checks each view on first use, on a padded random
batch: entered at layer L with the model's own states there, it must give the
model's own logits (or states at `exit`); a view that does not gets a ValueError.
"""

import dataclasses
import threading
from typing import Any

import torch
from torch import nn

from lit_sig.models.padding import Padding, tolerance
from lit_sig.models.segments import BlockFormat, Blocks, SegmentView, find_blocks, format_of, input_states, states_of

_PROBE_SHAPE = (3, 7)  # Sequences x tokens of the check batch; sequence 1 is padded to 4 tokens.
_PROBE_REAL = 4


@dataclasses.dataclass
class _Reference:
    """The model's own pass on the check batch: its inputs, logits and every layer's states."""

    kwargs: dict[str, torch.Tensor | None]  # inputs_embeds, attention_mask, position_ids
    real: torch.Tensor  # [B, L] bool: positions that are not padding
    logits: torch.Tensor  # [B, C]
    states: list[torch.Tensor]  # N + 1 of [B, L, H]: layer 0 .. N
    formats: list[BlockFormat]
    view_takes_model_inputs: bool  # The logits view takes the model's inputs and gives its logits.


class LayerViews:
    """The checked `SegmentView`s of one model, built on first use (thread-safe).

    Args:
        model: the full model (every view that stops at a layer is built from it).
        logits_view: a module giving the model's logits with less work (`first_token`), or the
            model: views that run to the logits are built from it.
        padding: how the model's passes are padded (the check batch is padded the same way).
    """

    def __init__(self, model: nn.Module, logits_view: nn.Module, padding: Padding):
        self.model, self.logits_view, self.padding = model, logits_view, padding
        self.name = type(model).__name__
        self._lock = threading.Lock()
        self._views: dict[tuple[int | None, int | None], SegmentView] = {}
        self._reference: _Reference | None = None
        self.blocks: Blocks | None = None
        self.error: str | None = None
        try:
            self.blocks = find_blocks(model)
        except ValueError as error:
            self.error = str(error)

    @property
    def num_layers(self) -> int | None:
        """N: layers are 0 .. N; None where the model's blocks were not found."""
        return None if self.blocks is None else self.blocks.count

    def accepted(self) -> str:
        return "embeddings" if self.blocks is None else f"embeddings, 0..{self.blocks.count}"

    def check_layer(self, layer: int, key: str) -> None:
        """Raises ValueError naming the valid range if `layer` is not one of the model's layers."""
        if self.blocks is None:
            raise ValueError(f"{key} {layer}: {self.error}")
        if not 0 <= layer <= self.blocks.count:
            raise ValueError(
                f"{key} {layer} doesn't exist: {self.name} has layers 0..{self.blocks.count} (0: the embedding"
                f" module's output, i: block i's output); accepted {key}: {self.accepted()}."
            )

    def width(self, layer: int) -> int:
        """Units of layer `layer`'s states."""
        return self._checked_reference().states[layer].shape[-1]

    def view(self, entry: int | None, exit: int | None) -> SegmentView:
        """The view entered at `entry` and stopping at `exit`, checked; raises ValueError if it is not the model."""
        key = (entry, exit)
        with self._lock:
            if key not in self._views:
                self._views[key] = self._build(entry, exit)
            return self._views[key]

    def _checked_reference(self) -> _Reference:
        with self._lock:
            if self._reference is None:
                self._reference = self._reference_pass()
            return self._reference

    def _build(self, entry: int | None, exit: int | None) -> SegmentView:
        """The view, checked on the model: entered with the model's own states, it gives the model's own
        logits (or states at `exit`). Views to the logits run through `logits_view` (which the family
        checked against the model at load); they are checked too where it takes the model's inputs."""
        if self._reference is None:
            self._reference = self._reference_pass()
        ref = self._reference
        if entry not in (None, 0) and any(f.is_tuple and f.extras < 0 for f in ref.formats[:entry]):
            raise ValueError(f"Layer {entry}: {self.name}'s blocks return more than states; lit_sig can't skip them.")
        blocks, embedding = self.blocks.of(self.model), self.model.get_input_embeddings()
        on_model = SegmentView(self.model, blocks, ref.formats, embedding, entry, exit)
        self._check(on_model, entry, exit)
        if exit is not None or self.logits_view is self.model:
            return on_model
        view = SegmentView(self.logits_view, blocks, ref.formats, embedding, entry, exit)
        if ref.view_takes_model_inputs:
            self._check(view, entry, exit)
        return view

    def _check(self, view: SegmentView, entry: int | None, exit: int | None) -> None:
        ref = self._reference
        kwargs = dict(ref.kwargs)
        if entry is not None:  # The rows' states: the model's own, zero at the pads (as rows are padded).
            kwargs["inputs_embeds"] = ref.states[entry] * ref.real[..., None].to(ref.states[entry].dtype)
        try:
            with torch.inference_mode():
                output = view(**kwargs)
        except Exception as error:  # pylint: disable=broad-except
            raise ValueError(
                f"{self._where(entry, exit)}: the view failed ({type(error).__name__}: {error})."
            ) from error
        ours, theirs = (output.logits.float(), ref.logits) if exit is None else (output.float(), ref.states[exit])
        if theirs.dim() == 3:  # Per position (states, a causal LM's logits): the real positions only.
            real = ref.real[..., None].to(theirs.dtype)
            ours, theirs = ours * real, theirs * real
        limit = tolerance(self._dtype()) * max(1.0, float(theirs.abs().max()))
        if ours.shape != theirs.shape or float((ours - theirs).abs().max()) > limit:
            raise ValueError(
                f"{self._where(entry, exit)}: a pass that starts there does not give the model's own"
                f" {'logits' if exit is None else 'states'}, so lit_sig can't enter {self.name} there;"
                f" layers of this model: 0..{self.blocks.count}."
            )

    def _where(self, entry: int | None, exit: int | None) -> str:
        parts = [] if entry is None else [f"Layer {entry}"]
        parts += [] if exit is None else [f"the neuron's layer {exit}"]
        return " and ".join(parts) or "The model"

    def _dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def _reference_pass(self) -> _Reference:
        """The model on a seeded random batch (one padded sequence), with every block's states and format."""
        embedding = self.model.get_input_embeddings()
        device, dtype = embedding.weight.device, embedding.weight.dtype
        B, L = _PROBE_SHAPE
        embs = torch.randn(B, L, embedding.embedding_dim, generator=torch.Generator().manual_seed(0))
        mask = torch.ones(B, L, dtype=torch.long)
        if self.padding.mixes_lengths:  # Sequence 1 has L - _PROBE_REAL pads where the model's passes put them.
            mask[1] = self.padding.pad(torch.ones(_PROBE_REAL, dtype=torch.long), L)
        mask = mask.to(device)
        kwargs = {"inputs_embeds": embs.to(device, dtype), "attention_mask": mask}
        if (position_ids := self.padding.position_ids(mask)) is not None:
            kwargs["position_ids"] = position_ids
        blocks = self.blocks.of(self.model)
        inputs: list[torch.Tensor] = []
        outputs: list[Any] = [None] * len(blocks)
        handles = [
            blocks[0].register_forward_pre_hook(lambda m, a, k: inputs.append(input_states(a, k)), with_kwargs=True)
        ]
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out)))
        try:
            with torch.inference_mode():
                logits = self.model(**kwargs).logits.float()  # [B, C]
        except Exception as error:  # pylint: disable=broad-except
            raise ValueError(f"{self.name} failed on a test batch ({type(error).__name__}: {error}).") from error
        finally:
            for handle in handles:
                handle.remove()
        if not inputs or any(o is None for o in outputs):
            raise ValueError(f"{self.name} did not run every one of its blocks once; lit_sig can't enter it.")
        formats = [format_of(o) for o in outputs]
        states = [inputs[0].float()] + [states_of(o).float() for o in outputs]
        return _Reference(kwargs, mask.bool(), logits, states, formats, self._view_takes(kwargs, logits))

    def _view_takes(self, kwargs: dict[str, torch.Tensor], logits: torch.Tensor) -> bool:
        """Whether the logits view can be called like the model (a view of a causal LM's targets can't)."""
        if self.logits_view is self.model:
            return True
        try:
            with torch.inference_mode():
                output = self.logits_view(**kwargs)
        except TypeError:
            return False
        return getattr(output, "logits", None) is not None and output.logits.shape == logits.shape
