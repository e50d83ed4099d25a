"""Notebook HTML heatmaps and paper figures of salience."""

import io
import re

import numpy as np
import pytest
from matplotlib import colors
from matplotlib import figure as mpl_figure

import lit_sig


def backgrounds(markup: str) -> list[tuple[float, float, float]]:
    return [colors.to_rgb(h) for h in re.findall(r"background:(#[0-9a-f]{6})", markup)]


def test_render_escapes_token_text():
    shown = lit_sig.render(["<script>alert(1)</script>", "a&b", '"x"'], [0.5, -1.0, 0.0])
    assert "<script>" not in shown.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown.html
    assert "a&amp;b" in shown.html and "&quot;x&quot;" in shown.html
    assert shown._repr_html_() == shown.html


def test_render_colours_are_signed_and_scaled_by_max_abs():
    shown = lit_sig.render(["good", "bad", "the", "fine"], np.array([2.0, -4.0, 0.0, 4.0]))
    good, bad, the, fine = backgrounds(shown.html)
    assert bad[2] > bad[0] and fine[0] > fine[2]  # Negative blue, positive red.
    assert the == pytest.approx((1.0, 1.0, 1.0), abs=0.04)  # Zero is white.
    assert fine[1] < good[1] < 1.0  # Half the max is paler than the max.
    assert 'title="-4"' in shown.html  # The raw value on hover.


def test_render_of_all_zeros_is_white():
    shown = lit_sig.render(["a", "b"], [0, 0])
    assert all(c == pytest.approx((1.0, 1.0, 1.0), abs=0.04) for c in backgrounds(shown.html))


@pytest.mark.parametrize("salience, message", [([1.0], "1 values for 2 tokens"), ([1.0, np.nan], "NaN")])
def test_render_rejects_bad_salience(salience, message):
    with pytest.raises(ValueError, match=message):
        lit_sig.render(["a", "b"], salience)


def test_plot_has_one_row_per_method():
    tokens = ["not", "a", "bad", "movie"]
    saliences = {"SIG": [0.1, -0.2, 0.4, 0.0], "IG": np.array([1.0, 2.0, -3.0, 0.5]), "Grad norm": [1, 2, 3, 4]}
    fig = lit_sig.plot(tokens, saliences, title="example")
    assert isinstance(fig, mpl_figure.Figure)
    ax = fig.axes[0]
    heat = np.asarray(ax.images[0].get_array())
    assert heat.shape == (3, 4)
    np.testing.assert_allclose(np.abs(heat).max(axis=1), 1.0)  # Each row scaled by its own max.
    np.testing.assert_allclose(heat[1], [1 / 3, 2 / 3, -1.0, 1 / 6])
    assert [t.get_text() for t in ax.get_yticklabels()] == list(saliences)
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    png = io.BytesIO()
    fig.savefig(png, format="png")
    assert png.getvalue().startswith(b"\x89PNG")


def test_plot_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        lit_sig.plot(["a"], {})
    with pytest.raises(ValueError, match="'IG' has 1 values for 2 tokens"):
        lit_sig.plot(["a", "b"], {"SIG": [1, 2], "IG": [1]})


def test_render_and_plot_an_interpreter_result(tiny_model):
    result = lit_sig.SequentialIntegratedGradients().run(
        [{"sentence": "a charming journey"}], tiny_model, None, config={"Interpolation steps": 4}
    )[0]["token_grad_sentence"]
    assert lit_sig.render(result.tokens, result.salience).html.count("<span") == len(result.tokens)
    fig = lit_sig.plot(result.tokens, {"SIG": result.salience})
    assert np.asarray(fig.axes[0].images[0].get_array()).shape == (1, len(result.tokens))
