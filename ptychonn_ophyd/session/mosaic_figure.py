"""The live mosaic in a matplotlib figure that refreshes during the scan.

A RunEngine subscriber: at a run's start it opens (or reuses) a figure and starts a
canvas timer that redraws the :class:`~ptychonn_ophyd.session.live_view.LiveView`'s
latest snapshot a few times a second; at the stop it draws the final one and stops
the timer.  The timer runs in the GUI's own thread (bluesky spins the Qt event loop
while a plan runs, and teleports this callback's documents there), so nothing draws
from the stitching thread.  Where the scan has not been is NaN, which shows as the
axes' dark background: a partly done scan reads correctly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bluesky.callbacks.mpl_plotting import QtAwareCallback

if TYPE_CHECKING:
    from ptychonn_ophyd.session.live_view import LiveView, Snapshot

log = logging.getLogger(__name__)


class MosaicFigure(QtAwareCallback):
    """Draws ``live_view``'s mosaic while a run is being stitched."""

    def __init__(self, live_view: LiveView, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.live_view = live_view
        self.figure = None
        self._axes = None
        self._image = None
        self._timer = None
        self._drawn: tuple[str, int] | None = None

    def start(self, doc: dict) -> None:
        if not (self.live_view.settings.enabled and self.live_view.figure_wanted):
            return
        if self.figure is None or not _open(self.figure):
            self._make_figure()
        self._drawn = None
        self._timer = self.figure.canvas.new_timer(
            interval=int(self.live_view.settings.update_period * 1000)
        )
        self._timer.add_callback(self.refresh)
        self._timer.start()

    def stop(self, doc: dict) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self.refresh()

    def refresh(self) -> None:
        """Draw the latest snapshot if it is new."""
        snapshot = self.live_view.latest
        if (
            snapshot is None
            or self.figure is None
            or not snapshot.phase.image.size  # nothing stitched yet: no extent to draw
            or self._drawn == (snapshot.uid, snapshot.frames)
        ):
            return
        self._drawn = (snapshot.uid, snapshot.frames)
        try:
            self._draw(snapshot)
        except Exception:  # a closed window or a broken backend must not stop the scan
            log.exception("drawing the live mosaic failed")

    def _make_figure(self) -> None:
        import matplotlib.pyplot as plt

        self.figure, self._axes = plt.subplots(num="PtychoNN live mosaic", clear=True)
        self._axes.set_facecolor("0.15")
        self._axes.set(xlabel="x (µm)", ylabel="y (µm)")
        self._image = None
        plt.show(block=False)

    def _draw(self, snapshot: Snapshot) -> None:
        phase = snapshot.phase
        if self._image is None:
            self._image = self._axes.imshow(phase.image, cmap="gray", extent=phase.extent_um)
            self.figure.colorbar(self._image, ax=self._axes, label="phase (rad)")
        else:
            self._image.set_data(phase.image)
            self._image.set_extent(phase.extent_um)
        self._image.autoscale()
        self._axes.set_title(f"{snapshot.uid[:8]}: {snapshot.frames} patches")
        self.figure.canvas.draw_idle()


def _open(figure: Any) -> bool:
    """Whether ``figure``'s window is still open."""
    import matplotlib.pyplot as plt

    return plt.fignum_exists(figure.number)
