"""The model's blocks, found from its module tree, and `SegmentView`: the model entered at a
layer's hidden states, stopping at one.

Layer i is numbered as in Hugging Face's `hidden_states` (see `lit_sig.models.layers`).
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
"""

import copy
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


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


def states_of(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def input_states(args: tuple, kwargs: dict) -> torch.Tensor:
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
        states = self.states if self.states is not None else input_states(args, kwargs)
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
        raise _Reached(input_states(args, kwargs))


class _StopAfter(_Stub):
    """Runs the block (or the stub in its place), then ends the pass with its output states."""

    def forward(self, *args, **kwargs) -> Any:
        raise _Reached(states_of(self.block(*args, **kwargs)))


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
            if isinstance(m, nn.ModuleList) and runs_blocks(m, blocks)
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


def runs_blocks(candidate: nn.ModuleList, blocks: nn.ModuleList) -> bool:
    """Whether `candidate` is the model's blocks, each one itself or a module built on it (a trimmed view)."""
    if len(candidate) != len(blocks):
        return False
    return all(c is b or any(m is b for m in c.modules()) for c, b in zip(candidate, blocks))


def format_of(output: Any) -> BlockFormat:
    """A block's output format; `extras` -1 where a tuple holds more than states and Nones."""
    if not isinstance(output, tuple):
        return BlockFormat()
    if any(o is not None for o in output[1:]):
        logging.info("A block returns %d outputs besides its states.", len(output) - 1)
        return BlockFormat(True, -1)
    return BlockFormat(True, len(output) - 1)
