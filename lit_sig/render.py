"""Salience in notebooks and papers: an HTML heatmap of tokens, and a matplotlib figure.

    lit_sig.render(tokens, salience)  # shows in Jupyter; `.html` is the markup
    lit_sig.plot(tokens, {"SIG": sig, "IG": ig}).savefig("figure.png")
    lit_sig.plot_layers(tokens, layers, salience)  # tokens x layers (`lit_sig.layer_sweep(...).plot()`)

Colours are diverging: red for positive salience, blue for negative, white for
zero, each row scaled by its largest |salience|. matplotlib is imported on the
first call, not with `import lit_sig`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib import figure as mpl_figure

CMAP = "RdBu_r"  # -1 blue, 0 white, +1 red


def _scaled(tokens: Sequence[str], salience: Sequence[float] | np.ndarray, name: str = "salience") -> np.ndarray:
    """`salience` as float64 `[T]` divided by its max |value| (zeros stay zeros)."""
    values = np.asarray(salience, dtype=np.float64).reshape(-1)  # [T]
    if len(values) != len(tokens):
        raise ValueError(f"{name} has {len(values)} values for {len(tokens)} tokens; give one per token.")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} has NaN or infinite values; give finite numbers.")
    peak = np.abs(values).max(initial=0.0)
    return values / peak if peak > 0 else values


class SalienceHTML:
    """An HTML heatmap of tokens; Jupyter displays it through `_repr_html_`."""

    def __init__(self, tokens: Sequence[str], salience: Sequence[float] | np.ndarray):
        scaled = _scaled(tokens, salience)
        raw = np.asarray(salience, dtype=np.float64).reshape(-1)
        import matplotlib  # pylint: disable=import-outside-toplevel
        from matplotlib import colors  # pylint: disable=import-outside-toplevel

        cmap = matplotlib.colormaps[CMAP]
        spans = []
        for token, value, original in zip(tokens, scaled, raw):
            background = colors.to_hex(cmap((value + 1) / 2))
            foreground = "#ffffff" if abs(value) > 0.6 else "#000000"
            spans.append(
                f'<span title="{original:.4g}" style="background:{background};color:{foreground};'
                f'padding:1px 3px;margin:1px;border-radius:3px;display:inline-block">'
                f"{html.escape(token)}</span>"
            )
        self.html = f'<div style="font-family:monospace;line-height:1.9">{"".join(spans)}</div>'

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html


def render(tokens: Sequence[str], salience: Sequence[float] | np.ndarray) -> SalienceHTML:
    """Tokens on a red (positive) / blue (negative) background, scaled by max |salience|.

    Raises:
        ValueError: `salience` has not one finite value per token.
    """
    return SalienceHTML(tokens, salience)


def plot(
    tokens: Sequence[str],
    saliences: Mapping[str, Sequence[float] | np.ndarray],
    title: str | None = None,
) -> mpl_figure.Figure:
    """A heatmap of several methods' salience: one row per method, one column per token.

    Each row is scaled by its own max |salience|, so that methods of different
    scales compare; the figure draws with Agg (no screen needed).

    Args:
        tokens: the `[T]` tokens.
        saliences: method name -> its `[T]` salience, in row order.
        title: optional figure title.

    Raises:
        ValueError: no methods, or a salience without one finite value per token.
    """
    if not saliences:
        raise ValueError("saliences is empty; give {method name: salience} for one or more methods.")
    from matplotlib import figure as mpl_figure  # pylint: disable=import-outside-toplevel,redefined-outer-name
    from matplotlib.backends import backend_agg  # pylint: disable=import-outside-toplevel

    rows = np.stack([_scaled(tokens, s, name=f"salience of {name!r}") for name, s in saliences.items()])  # [M, T]
    fig = mpl_figure.Figure(figsize=(max(4.0, 0.5 * len(tokens) + 2.0), 0.55 * len(rows) + 1.4), layout="constrained")
    backend_agg.FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(rows, cmap=CMAP, vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(tokens)), labels=list(tokens), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(rows)), labels=list(saliences))
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.colorbar(image, ax=ax, label="salience / max |salience|", shrink=0.9, pad=0.01)
    if title:
        ax.set_title(title)
    return fig


def plot_layers(
    tokens: Sequence[str],
    layers: Sequence[str],
    salience: Sequence[Sequence[float]] | np.ndarray,
    title: str | None = None,
    scale: str = "all",
) -> mpl_figure.Figure:
    """A tokens x layers heatmap: one row per layer (the lowest at the bottom), one column per token.

    Args:
        tokens: the `[T]` tokens of the sequence.
        layers: the `[M]` layer names, lowest first ("embeddings", "0", "1", ...).
        salience: `[M, T]` salience of each token at each layer.
        title: optional figure title.
        scale: "all" divides every row by the largest |salience| of the figure (where in depth the
            salience is large shows), "layer" each row by its own (each layer's pattern shows).

    Raises:
        ValueError: a shape that doesn't match the tokens and layers, non-finite values, or another scale.
    """
    values = np.asarray(salience, dtype=np.float64)  # [M, T]
    if values.shape != (len(layers), len(tokens)):
        raise ValueError(
            f"salience has shape {values.shape}; expected {(len(layers), len(tokens))} (one row per layer, one"
            " value per token)."
        )
    if scale not in ("all", "layer"):
        raise ValueError(f"scale={scale!r}; accepted: 'all', 'layer'.")
    if not np.isfinite(values).all():
        raise ValueError("salience has NaN or infinite values; give finite numbers.")
    peaks = np.abs(values).max(axis=1, keepdims=True) if scale == "layer" else np.abs(values).max(initial=0.0)
    rows = np.divide(values, peaks, out=np.zeros_like(values), where=np.broadcast_to(peaks, values.shape) > 0)
    from matplotlib import figure as mpl_figure  # pylint: disable=import-outside-toplevel,redefined-outer-name
    from matplotlib.backends import backend_agg  # pylint: disable=import-outside-toplevel

    fig = mpl_figure.Figure(figsize=(max(4.0, 0.55 * len(tokens) + 2.2), 0.4 * len(layers) + 1.6), layout="constrained")
    backend_agg.FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(rows, cmap=CMAP, vmin=-1, vmax=1, aspect="auto", origin="lower")
    ax.set_xticks(range(len(tokens)), labels=list(tokens), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(layers)), labels=list(layers))
    ax.set_ylabel("layer")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    label = "salience / max |salience|" + (" of the layer" if scale == "layer" else "")
    fig.colorbar(image, ax=ax, label=label, shrink=0.9, pad=0.01)
    if title:
        ax.set_title(title)
    return fig
