"""Ridge least squares from streamed batches: T minimising |X T - Y|^2 + lam |T|^2, from X^T X and X^T Y.

The normal equations are summed over calibration batches in float64, so memory is O(d^2), not
O(tokens x d). numpy's solve does the rest; nothing here needs more than `np.linalg`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NormalEquations", "relative_weights", "ridge_solve", "ridge_solve_toward", "squared_error",
           "weighted_squared_error"]

#: Ridge strength, relative to the mean diagonal of X^T X (scale-free across layers and models).
RIDGE = 1e-3


class NormalEquations:
    """Running X^T X and X^T Y of a least-squares fit X T ~ Y, one batch at a time."""

    def __init__(self) -> None:
        self.gram: np.ndarray | None = None  # X^T X, [d_in, d_in]
        self.cross: np.ndarray | None = None  # X^T Y, [d_in, d_out]
        self.rows = 0

    def add(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> None:
        """One batch: X [..., d_in] and Y [..., d_out]; leading axes are flattened into rows (tokens).
        WEIGHTS [rows] (optional): each row's weight in the squared error."""
        x = x.reshape(-1, x.shape[-1]).astype(np.float64)
        y = y.reshape(-1, y.shape[-1]).astype(np.float64)
        xw = x if weights is None else x * weights.reshape(-1, 1)  # rows scaled by their weight
        gram, cross = xw.T @ x, xw.T @ y
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross
        self.rows += len(x)

    def solve(self, ridge: float = RIDGE, prior: np.ndarray | None = None) -> np.ndarray:
        """T [d_in, d_out] minimising |X T - Y|^2 + lam |T - PRIOR|^2 (see ridge_solve)."""
        if self.gram is None:
            raise ValueError("no batches added")
        return ridge_solve(self.gram, self.cross, ridge, prior)


def ridge_solve(gram: np.ndarray, cross: np.ndarray, ridge: float = RIDGE, prior: np.ndarray | None = None) -> np.ndarray:
    """T = (X^T X + lam I)^-1 (X^T Y + lam PRIOR) from GRAM = X^T X and CROSS = X^T Y, lam = RIDGE x
    mean(diag(X^T X)): the ridge pulls T towards PRIOR (0 when None; the identity for a map folded onto a
    writer's output, whose no-fit value it is)."""
    lam = ridge * float(np.trace(gram)) / len(gram)
    rhs = cross if prior is None else cross + lam * prior
    return np.linalg.solve(gram + lam * np.eye(len(gram)), rhs)


def relative_weights(stream: np.ndarray) -> np.ndarray:
    """Row weights 1 / |row|^2 of STREAM [..., d] (flattened to rows): the fit then minimises each token's
    error relative to its own norm, which is what a norm-reading consumer sees. A plain L2 fit is ruled by
    the few tokens with massive activations (attention sinks, 100x the median norm)."""
    rows = stream.reshape(-1, stream.shape[-1]).astype(np.float64)
    norms = np.einsum("ij,ij->i", rows, rows)  # |row|^2 per token
    return 1.0 / np.maximum(norms, 1e-12 * max(float(norms.max()), 1e-30))


def ridge_solve_toward(gram: np.ndarray, cross: np.ndarray, prior: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """T minimising |X T - Y|^2 + lam |T - PRIOR|^2: (X^T X + lam I)^-1 (X^T Y + lam PRIOR), lam as in ridge_solve.

    A refit of weights that already work (a surviving layer's own) shrinks towards them, not towards zero:
    directions the calibration tokens do not excite keep their trained values."""
    return ridge_solve(gram, cross, ridge, prior)


def weighted_squared_error(prediction: np.ndarray, target: np.ndarray, weights: np.ndarray) -> float:
    """Sum over rows of WEIGHTS x squared error (PREDICTION, TARGET [..., width] flattened to rows), in float64."""
    diff = (prediction.astype(np.float64) - target.astype(np.float64)).reshape(len(weights), -1)
    return float(np.einsum("ij,ij,i->", diff, diff, weights))


def squared_error(prediction: np.ndarray, target: np.ndarray) -> float:
    """Sum of squared differences, in float64."""
    diff = prediction.astype(np.float64) - target.astype(np.float64)
    return float(np.vdot(diff.ravel(), diff.ravel()))
