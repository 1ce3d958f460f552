"""The reconstruction figure that replay and the demo draw: one style, one colour scale.

No frame tells its patch's absolute phase, so a phase image is shown relative: its
median over the covered region sits at 0.  The phase scale is the data's own: from the
:data:`PHASE_PERCENTILES` of every phase panel's covered pixels together, so that truth
and reconstruction share one scale and an object fills it, and the colour bar says so.
Only the covered region is drawn (where the summed patch weight reaches
:data:`COVERED_FRACTION` of its peak): the border that one or two patches lit is
blocky and carries their edge artefacts. The view is cut to that region.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ptychonn_ophyd.analysis.stitch import StitchedImage
from ptychonn_ophyd.models.bundled import Stitching, recorded_accuracy

PHASE_PERCENTILES = (1, 99)
"""Percentiles of the phase panels' covered pixels at the ends of their one colour scale:
robust to a few wild pixels at edges and steps."""

ERROR_RANGE = (-0.5, 0.5)
"""Colour range of an error panel (radians)."""

COLORMAPS = {"phase": "gray", "amplitude": "gray", "error": "coolwarm"}
"""The colormap of each kind of panel."""

COLORBAR_LABELS = {
    "phase": "phase from the median (rad), {}th-{}th percentile".format(*PHASE_PERCENTILES),
    "amplitude": "amplitude",
    "error": "error (rad)",
}

COVERED_FRACTION = 0.2
"""A pixel is covered where its summed patch weight is at least this part of the peak."""

Scale = Literal["phase", "amplitude", "error"]


@dataclass(frozen=True)
class Panel:
    """One image of the figure: a title, pixels on the stitched grid, and its scale."""

    title: str
    image: np.ndarray
    scale: Scale


def covered(weight: np.ndarray) -> np.ndarray:
    """Where the summed patch ``weight`` reaches :data:`COVERED_FRACTION` of its peak."""
    return weight >= COVERED_FRACTION * float(np.max(weight))


def phase_median(image: np.ndarray, region: np.ndarray) -> float:
    """The phase a relative image is shown from: its median over ``region``."""
    return float(np.median(image[region]))


def relative_phase(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``image`` shifted so that its :func:`phase_median` is 0 (phase is relative)."""
    return image - phase_median(image, region)


def run_title(start: dict[str, Any], frames: int, accuracy: str = "") -> str:
    """Scan id, uid, frames, model (file and hash) and, if known, accuracy."""
    facts = start.get("ptychonn", {})
    model = Path(str(facts.get("model", ""))).name
    model_hash = str(facts.get("model_hash", ""))[:12]
    lines = [
        f"scan {start.get('scan_id', '?')}  ·  {start['uid']}",
        f"{frames} frames  ·  model {model or '?'}" + (f" ({model_hash})" if model_hash else ""),
    ]
    return "\n".join(lines + ([accuracy] if accuracy else []))


def replay_accuracy(start: dict[str, Any], stitching: Stitching = "aligned") -> str:
    """The accuracy the run's model was trained to with ``stitching``, where its recipe
    records it, else ""."""
    return recorded_accuracy(str(start.get("ptychonn", {}).get("model", "")), stitching)


def save_figure(
    path: str | Path,
    panels: list[Panel],
    grid: StitchedImage,
    title: str,
    positions_um: np.ndarray | None = None,
) -> Path:
    """Draw ``panels`` (images on ``grid``'s pixels) over ``grid``'s covered region.

    ``positions_um`` ``(N, 2)``, if given, are marked as small dots on every panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    region = covered(grid.weight)
    phase_range = _phase_range(panels, region)
    rows, cols = _bounds(region)
    figure = Figure(figsize=(max(4.6 * len(panels), 6.4), 5.4), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        cmap = matplotlib.colormaps[COLORMAPS[panel.scale]].with_extremes(bad="white")
        shown = np.where(region, panel.image, np.nan)[rows, cols]
        low, high = phase_range if panel.scale == "phase" else _limits(panel, region)
        drawn = ax.imshow(shown, cmap=cmap, vmin=low, vmax=high, extent=_extent(grid, rows, cols))
        if positions_um is not None:
            ax.plot(positions_um[:, 0], positions_um[:, 1], ".", color="tab:orange", ms=1.5)
        ax.set(title=panel.title, xlabel="x (µm)", ylabel="y (µm)")
        figure.colorbar(drawn, ax=ax, shrink=0.8, label=COLORBAR_LABELS[panel.scale])
    figure.suptitle(title, fontsize="medium")
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path


def _phase_range(panels: list[Panel], region: np.ndarray) -> tuple[float, float]:
    """One colour range for every phase panel: :data:`PHASE_PERCENTILES` of them all."""
    values = [panel.image[region] for panel in panels if panel.scale == "phase"]
    if not values:
        return (-1.0, 1.0)
    low, high = np.nanpercentile(np.concatenate(values), PHASE_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def _limits(panel: Panel, region: np.ndarray) -> tuple[float, float]:
    if panel.scale == "error":
        return ERROR_RANGE
    low, high = np.percentile(panel.image[region], [1, 99])
    return float(low), float(high)


def _bounds(region: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns of ``region``'s bounding box."""
    rows, cols = np.nonzero(region)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def _extent(grid: StitchedImage, rows: slice, cols: slice) -> tuple[float, ...]:
    """``(left, right, bottom, top)`` in µm of the pixels ``rows, cols`` of ``grid``."""
    p, (cy, cx) = grid.pixel_size_um, grid.center
    return (
        (cols.start - cx - 0.5) * p,
        (cols.stop - cx - 0.5) * p,
        (rows.stop - cy - 0.5) * p,
        (rows.start - cy - 0.5) * p,
    )
