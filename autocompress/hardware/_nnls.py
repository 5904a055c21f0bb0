"""Non-negative least squares in numpy (Lawson and Hanson, 1974), so that estimating latency
from a profile needs no scipy: the base install is numpy, onnx and onnxruntime."""

from __future__ import annotations

import numpy as np

__all__ = ["nnls"]


def nnls(a: np.ndarray, b: np.ndarray, *, max_iter: int | None = None
         ) -> tuple[np.ndarray, float]:
    """``argmin ||a x - b||`` subject to ``x >= 0``, and the residual norm, as
    ``scipy.optimize.nnls`` returns them (the active-set method of Lawson and Hanson).

    ``max_iter`` (default ``30 * columns``) bounds the inner iterations; reaching it raises
    ``RuntimeError`` (it does not happen for the few well-scaled columns of a latency fit).
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.ndim != 2 or b.shape != (a.shape[0],):
        raise ValueError(f"nnls needs a matrix and a vector of its rows, got {a.shape} and "
                         f"{b.shape}")
    rows, columns = a.shape
    limit = 30 * columns if max_iter is None else max_iter
    tolerance = 10 * np.finfo(float).eps * np.linalg.norm(a, 1) * max(rows, columns)
    x = np.zeros(columns)
    passive = np.zeros(columns, dtype=bool)
    gradient = a.T @ b
    iterations = 0
    while not passive.all() and (gradient[~passive] > tolerance).any():
        passive[int(np.argmax(np.where(passive, -np.inf, gradient)))] = True
        while True:
            iterations += 1
            if iterations > limit:
                raise RuntimeError(f"nnls did not converge in {limit} iterations")
            z = np.zeros(columns)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            # step from x towards z until the first passive weight reaches zero
            leaving = passive & (z <= 0)
            alpha = np.min(x[leaving] / (x[leaving] - z[leaving]))
            x = x + alpha * (z - x)
            passive &= x > tolerance
            x[~passive] = 0.0
        gradient = a.T @ (b - a @ x)
    return x, float(np.linalg.norm(a @ x - b))
