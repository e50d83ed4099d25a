"""Inside the model: views that enter its blocks at a layer's hidden states, or stop at one.

Layer i is numbered as in Hugging Face's `hidden_states`: 0 is what enters the first
block (the embedding module's output), i >= 1 the output of block i. (Hugging Face
ties its last entry to `last_hidden_state`, which is after the final norm where a
model has one, e.g. Llama or GPT-2; lit_sig's layer N is block N's own output, before
that norm, as captum's layer methods on that block see it. Below N they agree, and
the tests check it.)

The blocks are found from the module tree: the one `nn.ModuleList` of
`config.num_hidden_layers` modules under the model (no table of architectures).
`SegmentView(entry, exit)` is the model with the blocks below `entry` skipped and
the rows' states put in at `entry`, stopping at layer `exit` (its states are
returned) or running to the logits. It is built, per call, from shallow copies of
the containers on the way to the blocks (as `first_token` does): the modules and
their parameters are the model's own. Whatever the model does before its first
block (position and type embeddings, LayerNorm, a projection, a scale) still runs,
on zeros, and is discarded; so a row entering at layer L costs about (N - L) / N of
a full pass.

`LayerViews.view` builds and checks each view on first use, on a padded random
batch: entered at layer L with the model's own states there, it must give the
model's own logits (or states at `exit`); a view that does not gets a ValueError.
"""

import copy
import dataclasses
import logging
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lit_sig.models.padding import Padding, tolerance

_PROBE_SHAPE = (3, 7)  # Sequences x tokens of the check batch; sequence 1 is padded to 4 tokens.
_PROBE_REAL = 4


class _Reached(Exception):
    """Raised by the stop wrapper with the states of the exit layer: ends the pass there."""

    def __init__(self, states: torch.Tensor):
        super().__init__("exit layer reached")
        self.states = states


@dataclasses.dataclass(frozen=True)
class BlockFormat:
    """What a block returns: a tensor, or a tuple of the states and `extras` Nones."""

    is_tuple: bool = False
    extras: int = 0

    def wrap(self, states: torch.Tensor) -> Any:
        return (states, *([None] * self.extras)) if self.is_tuple else states


def _states_of(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _input_states(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_states(args: tuple, kwargs: dict, states: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (states, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": states}


class _Stub(nn.Module):
    """Stands in for a block; other attributes (`attention_type`, ...) are the block's."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if "block" not in modules:
                raise
            return getattr(modules["block"], name)


class _Skipped(_Stub):
    """Computes nothing: returns `states` (or its input) as the block would return them."""

    def __init__(self, block: nn.Module, block_format: BlockFormat, states: torch.Tensor | None = None):
        super().__init__(block)
        self.block_format = block_format
        self.states = states

    def forward(self, *args, **kwargs) -> Any:
        states = self.states if self.states is not None else _input_states(args, kwargs)
        return self.block_format.wrap(states)


class _Fed(_Stub):
    """Runs the block on `states` in place of its input."""

    def __init__(self, block: nn.Module, states: torch.Tensor):
        super().__init__(block)
        self.states = states

    def forward(self, *args, **kwargs) -> Any:
        args, kwargs = _with_states(args, kwargs, self.states)
        return self.block(*args, **kwargs)


class _StopBefore(_Stub):
    """Ends the pass with the block's input states (layer 0: what enters the first block)."""

    def forward(self, *args, **kwargs) -> Any:
        raise _Reached(_input_states(args, kwargs))


class _StopAfter(_Stub):
    """Runs the block (or the stub in its place), then ends the pass with its output states."""

    def forward(self, *args, **kwargs) -> Any:
        raise _Reached(_states_of(self.block(*args, **kwargs)))


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Where a model's blocks sit: the dotted path of their `nn.ModuleList`."""

    path: str
    count: int

    def of(self, root: nn.Module) -> nn.ModuleList:
        return root.get_submodule(self.path)


def find_blocks(model: nn.Module) -> Blocks:
    """The model's blocks: the one `nn.ModuleList` of `config.num_hidden_layers` modules in it.

    Raises:
        ValueError: no such list, or more than one at the shallowest depth.
    """
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    name = type(model).__name__
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"{name} has no config.num_hidden_layers; lit_sig can't find its layers.")
    found = [
        path
        for path, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == count and path
    ]
    if found:
        depth = min(p.count(".") for p in found)
        found = [p for p in found if p.count(".") == depth]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(found)})"
        raise ValueError(
            f"{name} has {what} module lists of its {count} layers (config.num_hidden_layers); lit_sig enters"
            " models whose blocks are one nn.ModuleList, so only Layer 'embeddings' and no Neuron work for it."
        )
    return Blocks(found[0], count)


def _with_child(module: nn.Module, name: str, child: nn.Module) -> nn.Module:
    """A shallow copy of `module` (same parameters, buffers and hooks) with `child` as `name`."""
    twin = copy.copy(module)
    twin._modules = dict(module._modules)  # pylint: disable=protected-access
    twin._modules[name] = child  # pylint: disable=protected-access
    return twin


def _with_path(root: nn.Module, path: str, child: nn.Module) -> nn.Module:
    """`root` with the module at dotted `path` replaced by `child`, by shallow copies along the path."""
    head, _, rest = path.partition(".")
    if not rest:
        return _with_child(root, head, child)
    return _with_child(root, head, _with_path(root._modules[head], rest, child))  # pylint: disable=protected-access


class SegmentView(nn.Module):
    """The model entered at layer `entry` (None: word embeddings, as the model takes them),
    stopping at layer `exit` (None: the root's own output, e.g. the logits).

    Called as the root is, `view(inputs_embeds=, attention_mask=, ...)`; with an `entry`,
    `inputs_embeds` holds the `[B, L, H]` states of that layer. Returns the root's output
    (exit None) or the `[B, L, H]` states of layer `exit`.

    Args:
        root: the model, or a module that runs it (a cheaper view of its logits); the blocks
            are replaced wherever `root` holds them.
        blocks: the model's blocks.
        formats: what each block returns.
        embedding: the model's input embedding (zeros of its width enter below `entry`).
    """

    def __init__(
        self,
        root: nn.Module,
        blocks: nn.ModuleList,
        formats: Sequence[BlockFormat],
        embedding: nn.Embedding,
        entry: int | None,
        exit: int | None,
    ):
        super().__init__()
        assert entry is None or exit is None or entry < exit, "a segment runs upwards"
        self.root = root
        self.paths = [
            name
            for name, m in root.named_modules(remove_duplicate=False)
            if isinstance(m, nn.ModuleList) and _runs_blocks(m, blocks)
        ]
        assert self.paths, "the root runs the model's blocks"
        self.blocks = root.get_submodule(self.paths[0])  # The root's own (a view may trim a block).
        assert all(root.get_submodule(path) is self.blocks for path in self.paths), "one list of blocks"
        self.formats = list(formats)
        self.entry = entry
        self.exit = exit
        self._embedding_dim = embedding.embedding_dim
        self._dtype = embedding.weight.dtype

    def forward(self, inputs_embeds: torch.Tensor, **kwargs) -> Any:
        states = None
        if self.entry is not None:
            states = inputs_embeds  # [B, L, H]
            B, L, _ = states.shape
            inputs_embeds = torch.zeros(B, L, self._embedding_dim, dtype=self._dtype, device=states.device)
        module, replaced = self.root, self._block_list(states)
        for path in self.paths:
            module = _with_path(module, path, replaced)
        try:
            output = module(inputs_embeds=inputs_embeds, **kwargs)
        except _Reached as reached:
            return reached.states
        assert self.exit is None, "the pass did not reach its exit layer"
        return output

    def _block_list(self, states: torch.Tensor | None) -> nn.ModuleList:
        blocks = list(self.blocks)
        if self.entry == 0:
            blocks[0] = _Fed(blocks[0], states)
        elif self.entry is not None:
            for i in range(self.entry):
                last = i == self.entry - 1
                blocks[i] = _Skipped(blocks[i], self.formats[i], states if last else None)
        if self.exit == 0:
            blocks[0] = _StopBefore(blocks[0])
        elif self.exit is not None:
            blocks[self.exit - 1] = _StopAfter(blocks[self.exit - 1])
        return nn.ModuleList(blocks)


def _runs_blocks(candidate: nn.ModuleList, blocks: nn.ModuleList) -> bool:
    """Whether `candidate` is the model's blocks, each one itself or a module built on it (a trimmed view)."""
    if len(candidate) != len(blocks):
        return False
    return all(c is b or any(m is b for m in c.modules()) for c, b in zip(candidate, blocks))


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
            blocks[0].register_forward_pre_hook(lambda m, a, k: inputs.append(_input_states(a, k)), with_kwargs=True)
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
        formats = [_format_of(o) for o in outputs]
        states = [inputs[0].float()] + [_states_of(o).float() for o in outputs]
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


def _format_of(output: Any) -> BlockFormat:
    """A block's output format; `extras` -1 where a tuple holds more than states and Nones."""
    if not isinstance(output, tuple):
        return BlockFormat()
    if any(o is not None for o in output[1:]):
        logging.info("A block returns %d outputs besides its states.", len(output) - 1)
        return BlockFormat(True, -1)
    return BlockFormat(True, len(output) - 1)
