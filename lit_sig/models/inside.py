"""Explanations inside the model, for every device-path family: rows at a layer, a neuron's activation.

`inside_inputs` re-keys a family's path inputs (`rows.SequencePathInput`):
- at layer L, x and the baseline become the `[L_seq, H]` states of layer L for the
  input and for the baseline input (the input with its word embeddings at the
  baseline), every position included: the layers below run once for each, and
  the rows then run only the layers above (`segments.SegmentView`);
- with a neuron, the rows' score F is that unit's activation (`neuron_scores`),
  and passes stop at the neuron's layer.
The engine and the methods see rows and scores as always.
"""

import dataclasses
from collections.abc import Sequence

import torch

from lit_sig.lit import protocol
from lit_sig.models import rows
from lit_sig.models.forward import Batch, ForwardRunner
from lit_sig.models.layers import LayerViews
from lit_sig.models.padding import Padding

LAYER_KEY, NEURON_KEY = "Layer", "Neuron"  # As the interpreters' config names them, for the messages.
_LOWER_PASS_SEQUENCES = 32  # Sequences per pass of the layers below an entry layer.


def check(
    views: LayerViews, prepared: Sequence[rows.SequencePathInput], layer: int | None, neuron: protocol.Neuron | None
) -> None:
    """Raises ValueError naming the valid range for a layer, unit or position that doesn't exist."""
    if layer is not None:
        views.check_layer(layer, LAYER_KEY)
    if neuron is None:
        return
    views.check_layer(neuron.layer, f"{NEURON_KEY} {str(neuron)!r}: layer")
    if layer is not None and layer >= neuron.layer:
        raise ValueError(
            f"{LAYER_KEY} {layer} with {NEURON_KEY} {str(neuron)!r}: rows must enter below the neuron's layer;"
            f" accepted {LAYER_KEY}: embeddings, 0..{neuron.layer - 1}."
        )
    width = views.width(neuron.layer)
    if not 0 <= neuron.unit < width:
        raise ValueError(
            f"{NEURON_KEY} {str(neuron)!r}: unit {neuron.unit} doesn't exist; layer {neuron.layer} has units"
            f" 0..{width - 1}."
        )
    for i, p in enumerate(prepared):
        if neuron.position is not None and not 0 <= neuron.position < len(p.full):
            raise ValueError(
                f"{NEURON_KEY} {str(neuron)!r}: position {neuron.position} is past input {i}'s {len(p.full)} tokens;"
                f" accepted positions: 0..{len(p.full) - 1} (over the whole tokenized sequence, [CLS] = 0)."
            )


def inside_inputs(
    views: LayerViews,
    runner: ForwardRunner,
    padding: Padding,
    mask_optional: bool,
    prepared: Sequence[rows.SequencePathInput],
    baselines: Sequence[torch.Tensor] | None,
    layer: int | None,
    neuron: protocol.Neuron | None,
) -> list[tuple[rows.SequencePathInput, torch.Tensor | None]]:
    """See `protocol.InsideModel.inside_path_inputs`."""
    check(views, prepared, layer, neuron)
    views.view(layer, None if neuron is None else neuron.layer)  # Checked now: a bad layer fails before any row.
    if layer is None:
        scored = [_scored_by(p, neuron) for p in prepared]
        return list(zip(scored, baselines if baselines is not None else [None] * len(prepared)))
    states = _layer_states(views, runner, padding, mask_optional, prepared, baselines, layer)
    return [_at_layer(_scored_by(p, neuron), x, b, layer) for p, (x, b) in zip(prepared, states)]


def _at_layer(
    p: rows.SequencePathInput, x_states: torch.Tensor, baseline_states: torch.Tensor | None, layer: int
) -> tuple[rows.SequencePathInput, torch.Tensor | None]:
    """`p` with x the `[L_seq, H]` states of `layer` at every position of its sequence.

    A family whose x already holds every token (a causal LM: no `sequence_tokens`) keeps its tokens
    and x's length; positions it never runs (after the last target) hold zeros and never move.
    """
    length = len(x_states) if p.sequence_tokens is not None else len(p.x)
    tokens = _field_tokens(p) if p.sequence_tokens is not None else p.tokens
    positions = torch.arange(len(x_states), device=x_states.device)
    at_layer = dataclasses.replace(
        p,
        tokens=tokens,
        x=_padded(x_states, length),
        full=x_states,
        positions=positions,
        movable=torch.arange(length, device=x_states.device) < len(x_states),
        entry=layer,
    )
    return at_layer, None if baseline_states is None else _padded(baseline_states, length)


def _padded(states: torch.Tensor, length: int) -> torch.Tensor:
    """`[length, H]`: `states` `[L, H]` and zero rows after them."""
    return torch.nn.functional.pad(states, (0, 0, 0, length - len(states)))


def _scored_by(p: rows.SequencePathInput, neuron: protocol.Neuron | None) -> rows.SequencePathInput:
    """`p` scored by the neuron (its score at x is then unknown: the engine scores x)."""
    return p if neuron is None else dataclasses.replace(p, neuron=neuron, input_score=None)


def _field_tokens(p: rows.SequencePathInput) -> list[list[str]]:
    """Every token of the sequence, split over the fields asked for: each field from its first word on
    (the first from position 0: [CLS]), up to the next field's first word."""
    assert p.sequence_tokens is not None, "the family records every token of the sequence"
    starts, offset = [], 0
    for field_tokens in p.tokens:
        starts.append(int(p.positions[offset]) if field_tokens else None)
        offset += len(field_tokens)
    starts[0] = 0
    for k in range(len(starts) - 1, 0, -1):  # A field without words starts where the next one does.
        if starts[k] is None:
            starts[k] = starts[k + 1] if k + 1 < len(starts) else len(p.sequence_tokens)
    ends = starts[1:] + [len(p.sequence_tokens)]
    return [list(p.sequence_tokens[a:b]) for a, b in zip(starts, ends)]


def _layer_states(
    views: LayerViews,
    runner: ForwardRunner,
    padding: Padding,
    mask_optional: bool,
    prepared: Sequence[rows.SequencePathInput],
    baselines: Sequence[torch.Tensor] | None,
    layer: int,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Per input, the `[L_seq, H]` float32 states of `layer` for x and (if given) for its baseline input."""
    lower = views.view(None, layer)
    pieces: list[rows.Piece] = []
    for i, p in enumerate(prepared):
        word_level = dataclasses.replace(p, entry=None, neuron=None)
        entering = len(p.positions)  # The rows of x that enter the model (a causal LM's stop at the last target).
        pieces.append((word_level, p.x[None, :entering]))
        if baselines is not None:
            pieces.append((word_level, baselines[i][None, :entering]))
    states: list[torch.Tensor | None] = [None] * len(pieces)
    for group in _groups(pieces, padding):
        chosen = [pieces[i] for i in group]
        batch = rows.rows_batch(chosen, padding, mask_optional)
        with torch.inference_mode():
            out = runner.run(lower, batch, full_precision=True).float()  # [R, L_pad, H]
        length = out.shape[1]
        for i, (p, _), part in zip(group, chosen, rows.piece_slices(chosen)):
            start = padding.offset(len(p.full), length)
            states[i] = out[part][0, start : start + len(p.full)].clone()  # [L_seq, H]
    if baselines is None:
        return [(s, None) for s in states]
    return list(zip(states[0::2], states[1::2]))


def _groups(pieces: Sequence[rows.Piece], padding: Padding) -> list[list[int]]:
    """Indices of pieces per pass: at most `_LOWER_PASS_SEQUENCES`, one length each where passes can't mix."""
    by_length: dict[int, list[int]] = {}
    for i, (p, _) in enumerate(pieces):
        by_length.setdefault(0 if padding.mixes_lengths else len(p.full), []).append(i)
    return [
        group[start : start + _LOWER_PASS_SEQUENCES]
        for group in by_length.values()
        for start in range(0, len(group), _LOWER_PASS_SEQUENCES)
    ]


def neuron_of(pieces: Sequence[rows.Piece]) -> protocol.Neuron | None:
    neuron = pieces[0][0].neuron
    assert all(p.neuron == neuron for p, _ in pieces), "one neuron per pass"
    return neuron


def neuron_scores(
    views: LayerViews,
    runner: ForwardRunner,
    padding: Padding,
    pieces: Sequence[rows.Piece],
    batch: Batch,
    neuron: protocol.Neuron,
    with_grads: bool,
) -> torch.Tensor:
    """`[R]` float32 activations of the neuron for the pass's rows (differentiable to `batch.embs`).

    The pass stops at the neuron's layer. Score-only rows run in float32 (see `_row_scores`).
    """
    view = views.view(batch.entry, neuron.layer)
    states = runner.run(view, batch, full_precision=not with_grads)[..., neuron.unit].float()  # [R, L_pad]
    length = states.shape[1]
    if neuron.position is None:
        if batch.attention_mask is None:
            return states.sum(-1)
        return (states * batch.attention_mask.to(states.dtype)).sum(-1)
    where = torch.cat(
        [
            torch.full((len(r),), padding.offset(len(p.full), length) + neuron.position, device=states.device)
            for p, r in pieces
        ]
    )  # [R]
    return states.gather(1, where[:, None])[:, 0]
