import numpy as np
import pytest

from lit_sig.core import quadrature

ALL_STEPS = [2, 3, 7, 50, 500]


@pytest.mark.parametrize("method", quadrature.METHODS)
@pytest.mark.parametrize("n", ALL_STEPS)
def test_weights_sum_to_one_and_alphas_in_unit_interval(method, n):
    alphas, weights = quadrature.quadrature(method, n)
    assert alphas.shape == weights.shape == (n,)
    assert np.isclose(weights.sum(), 1.0, atol=1e-12)
    assert np.all((alphas >= 0) & (alphas <= 1))
    assert np.all(weights > 0)


# Highest polynomial degree each rule integrates exactly with n points.
EXACT_DEGREE = {
    "gausslegendre": lambda n: 2 * n - 1,
    "riemann_middle": lambda n: 1,
    "riemann_trapezoid": lambda n: 1,
    "riemann_left": lambda n: 0,
    "riemann_right": lambda n: 0,
}


@pytest.mark.parametrize("method", quadrature.METHODS)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_low_degree_polynomials_integrate_exactly(method, n):
    alphas, weights = quadrature.quadrature(method, n)
    for degree in range(EXACT_DEGREE[method](n) + 1):
        assert np.isclose(np.sum(weights * alphas**degree), 1.0 / (degree + 1), atol=1e-12), degree
    degree = EXACT_DEGREE[method](n) + 1  # One degree more is not exact.
    assert not np.isclose(np.sum(weights * alphas**degree), 1.0 / (degree + 1), atol=1e-12)


@pytest.mark.parametrize("method", quadrature.METHODS)
def test_error_shrinks_with_steps(method):
    errors = []
    for n in (4, 16, 64):
        alphas, weights = quadrature.quadrature(method, n)
        errors.append(abs(np.sum(weights * np.exp(alphas)) - (np.e - 1)))
    assert errors[0] > errors[1] > errors[2] or errors[2] < 1e-12


def test_riemann_endpoints():
    assert quadrature.quadrature("riemann_left", 4)[0].tolist() == [0, 0.25, 0.5, 0.75]
    assert quadrature.quadrature("riemann_right", 4)[0].tolist() == [0.25, 0.5, 0.75, 1]
    alphas, weights = quadrature.quadrature("riemann_trapezoid", 3)
    assert alphas.tolist() == [0, 0.5, 1] and weights.tolist() == [0.25, 0.5, 0.25]


@pytest.mark.parametrize(
    "method,n,message",
    [
        ("simpson", 10, "accepted: gausslegendre"),
        ("gausslegendre", 0, r"\[1, 500\]"),
        ("gausslegendre", -1, r"\[1, 500\]"),
        ("gausslegendre", 501, r"\[1, 500\]"),
        ("gausslegendre", 10**7, r"\[1, 500\]"),
        ("gausslegendre", 2.5, "integer"),
        ("gausslegendre", "abc", "integer"),
        ("gausslegendre", True, "integer"),
        ("riemann_trapezoid", 1, r"\[2, 500\]"),
    ],
)
def test_bad_arguments_raise(method, n, message):
    with pytest.raises(ValueError, match=message):
        quadrature.quadrature(method, n)


@pytest.mark.parametrize("n", [2, 3, 5, 9])
def test_gauss_lobatto_properties(n):
    alphas, weights = quadrature.gauss_lobatto(n)
    assert alphas[0] == 0.0 and alphas[-1] == 1.0 and np.all(np.diff(alphas) > 0)
    assert np.isclose(weights.sum(), 1.0, atol=1e-12) and np.all(weights > 0)
    exact = 2 * n - 3
    for degree in range(exact + 1):
        assert np.isclose(np.sum(weights * alphas**degree), 1.0 / (degree + 1), atol=1e-12), degree
    assert abs(np.sum(weights * alphas ** (exact + 1)) - 1.0 / (exact + 2)) > 1e-12


@pytest.mark.parametrize("n", [1, 0, 2.5, True])
def test_gauss_lobatto_bad_points(n):
    with pytest.raises(ValueError, match=">= 2"):
        quadrature.gauss_lobatto(n)


@pytest.mark.parametrize("method", quadrature.METHODS)
def test_rules_are_cached_but_callers_get_their_own_copy(method):
    quadrature.quadrature(method, 7)
    hits = quadrature._rule.cache_info().hits
    alphas, weights = quadrature.quadrature(method, 7)
    assert quadrature._rule.cache_info().hits == hits + 1  # Computed once, not per call.
    expected = (alphas.copy(), weights.copy())
    alphas[:] = -1.0  # A caller scribbling on its rule must not change the next caller's.
    weights[:] = 0.0
    again = quadrature.quadrature(method, 7)
    np.testing.assert_array_equal(again[0], expected[0])
    np.testing.assert_array_equal(again[1], expected[1])
    assert again[0].flags.writeable and again[1].flags.writeable
