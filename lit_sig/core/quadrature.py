"""The one quadrature seam: every path method sees only `(alphas, weights)`.

`alphas` are points in [0, 1] along the straight path from baseline (0) to input
(1); `weights` sum to 1, so `sum(weights * f(alphas))` approximates the integral
of f over [0, 1]. Unlike captum 0.9, `riemann_trapezoid` weights sum to 1 too.
"""

import functools

import numpy as np

METHODS = (
    "gausslegendre",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
)
MIN_STEPS = 1
MAX_STEPS = 500


def quadrature(method: str, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(alphas, weights)`, each float64 `[num_steps]`, for `method`.

    Raises:
        ValueError: unknown method, or a step count outside [MIN_STEPS, MAX_STEPS]
            (`riemann_trapezoid` needs at least 2 points).
    """
    if method not in METHODS:
        raise ValueError(f"Unknown integration method {method!r}; accepted: {', '.join(METHODS)}.")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise ValueError(f"Interpolation steps must be an integer in [{MIN_STEPS}, {MAX_STEPS}], got {num_steps!r}.")
    min_steps = 2 if method == "riemann_trapezoid" else MIN_STEPS
    if not min_steps <= num_steps <= MAX_STEPS:
        raise ValueError(f"Interpolation steps for {method} must be in [{min_steps}, {MAX_STEPS}], got {num_steps}.")
    alphas, weights = _rule(method, int(num_steps))
    return alphas.copy(), weights.copy()


@functools.lru_cache(maxsize=64)
def _rule(method: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule itself, computed once per `(method, n)`: Gauss-Legendre at n = 50 costs about 2.5 ms."""
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return (nodes + 1.0) / 2.0, weights / 2.0
    if method == "riemann_trapezoid":
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] /= 2.0
        return np.linspace(0.0, 1.0, n), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    alphas = (np.arange(n) + offset[method]) / n
    return alphas, np.full(n, 1.0 / n)


def gauss_lobatto(num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Lobatto `(alphas, weights)` on [0, 1]: both endpoints are nodes.

    Exact for polynomials of degree 2 * num_points - 3. Adaptive SIG uses it for
    panels whose endpoint scores it also needs, so endpoints are shared.
    """
    if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or num_points < 2:
        raise ValueError(f"Gauss-Lobatto needs an integer number of points >= 2, got {num_points!r}.")
    alphas, weights = _lobatto(int(num_points))
    return alphas.copy(), weights.copy()


@functools.lru_cache(maxsize=16)
def _lobatto(num_points: int) -> tuple[np.ndarray, np.ndarray]:
    legendre = np.polynomial.legendre.Legendre.basis(num_points - 1)  # P_{n-1}
    nodes = np.concatenate([[-1.0], np.sort(legendre.deriv().roots().real), [1.0]])
    weights = 2.0 / (num_points * (num_points - 1) * legendre(nodes) ** 2)
    return (nodes + 1.0) / 2.0, weights / 2.0
