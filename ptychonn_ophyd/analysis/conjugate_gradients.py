"""Conjugate gradients for the solved mosaic's two systems, bounded for a live picture.

Both of :class:`~ptychonn_ophyd.analysis.solved_mosaic.SolvedMosaic`'s linear systems
(the transmission map's nodes and the patches' offsets) are symmetric positive definite
and given only as a product (a loop over the patches, or FFT convolutions of the
canvas).  A live picture must not wait for either to converge, so a solve here stops at
a number of steps or a deadline as well as at its tolerance, and the next one starts
from where it stopped; and it lets its caller work between steps (the live view adds
the patches that arrived meanwhile, so a long solve holds up none of them).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def conjugate_gradients(
    apply: Callable[[np.ndarray], np.ndarray],
    rhs: np.ndarray,
    start: np.ndarray,
    *,
    tolerance: float,
    steps: int,
    deadline: float | None = None,
    preconditioner: np.ndarray | None = None,
    between: Callable[[], object] | None = None,
) -> tuple[np.ndarray, bool]:
    """Solve ``apply(x) = rhs`` from ``start``; return ``x`` and whether it converged.

    Parameters
    ----------
    apply
        The system's product with a vector.
    tolerance
        Relative residual ``|rhs - apply(x)| / |rhs|`` at which to stop.
    steps
        Steps at most.
    deadline
        ``time.monotonic()`` after which no step starts.
    preconditioner
        Element-wise inverse of the system's diagonal (Jacobi), or ``None``.
    between
        Called before each step.
    """
    solution = start.copy()
    residual = rhs - apply(solution)
    scaled = residual if preconditioner is None else preconditioner * residual
    direction, product = scaled.copy(), residual @ scaled
    size, goal = residual @ residual, tolerance**2 * (rhs @ rhs)
    for _ in range(steps):
        if size <= goal or (deadline is not None and time.monotonic() > deadline):
            break
        if between is not None:
            between()
        applied = apply(direction)
        curvature = direction @ applied
        if not curvature > 0:  # nothing left but rounding
            size = goal
            break
        step = product / curvature
        solution += step * direction
        residual -= step * applied
        size = residual @ residual
        scaled = residual if preconditioner is None else preconditioner * residual
        product, previous = residual @ scaled, product
        direction = scaled + (product / previous) * direction
    return solution, bool(size <= goal)
