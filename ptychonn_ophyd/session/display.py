"""Where a session draws its figures: in Qt's main thread where there is a screen, nowhere
without one.

The RunEngine calls its subscribers from its own thread.  Matplotlib figures may only be
touched from the thread that owns the GUI, so bluesky's plotting callbacks (its
``QtAwareCallback``, which BestEffortCallback's plots and
:class:`~ptychonn_ophyd.session.mosaic_figure.MosaicFigure` are) hand their documents to
Qt's main thread through a "teleporter", and bluesky spins Qt's event loop while a plan
runs.  Only Qt has that: with Tk, the first scan's figure is drawn from the wrong thread
and the session dies after it ("Calling Tcl from different apartment").  So
:func:`choose_backend` picks Qt, or no figures at all, and says why in one line.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Protocol

log = logging.getLogger(__name__)

QT_BACKEND = "QtAgg"
NO_FIGURES = "Agg"
GUI_EXTRA = "pip install 'ptychonn-ophyd[gui]'"
"""How to get a Qt binding (PySide6) into the session's environment."""

_QT_PROBE = (
    "from matplotlib.backends.qt_compat import QtWidgets; "
    "app = QtWidgets.QApplication(['ptychonn-probe'])"
)
"""Start a Qt application and exit: Qt aborts the whole process when it cannot open the
screen (a missing system library of its platform plugin), so it is tried in a child."""
PROBE_TIMEOUT_S = 30.0


class Shell(Protocol):
    """What :func:`choose_backend` uses of an IPython shell."""

    def enable_matplotlib(self, gui: str | None = None) -> tuple[str, str]: ...


def screen() -> str | None:
    """The screen this process would draw on (``$DISPLAY`` or ``$WAYLAND_DISPLAY``)."""
    return os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or None


def qt_problem() -> str | None:
    """Why Qt cannot open a window on this screen, in one line; ``None`` if it can."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _QT_PROBE],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return f"Qt did not open the screen {screen()} within {PROBE_TIMEOUT_S:.0f} s"
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    if any("qt_compat" in line or "Qt binding" in line for line in lines):
        return f"no Qt binding is installed ({GUI_EXTRA})"
    qt_said = [line.split(": ", 1)[-1] for line in lines if line.startswith("qt.qpa.")]
    said = (qt_said or lines or [f"exit status {done.returncode}"])[0]  # Qt's first is the cause
    return f"Qt cannot open the screen {screen()}: {said}"


def under_queueserver() -> bool:
    """Whether this process is bluesky-queueserver's RE worker, running the startup code."""
    try:
        from bluesky_queueserver import is_re_worker_active
    except ImportError:
        return False
    return bool(is_re_worker_active())


def choose_backend(shell: Shell | None = None) -> str:
    """Set matplotlib's backend for a Bluesky session and return it.

    With a screen that Qt can open: ``QtAgg`` (in IPython through its event-loop
    integration, so windows stay live at the prompt) and bluesky's Qt teleporter, made
    here in the main thread.  Otherwise ``Agg``: no windows, and where there is a screen,
    one warning saying why.  A non-Qt GUI backend asked for with ``MPLBACKEND`` is
    replaced, with a warning, for the reason the module docstring gives.  RE Manager's
    worker (bluesky-queueserver) draws nothing: nobody sits at its screen, and the live
    view's channel shows the mosaic.
    """
    import matplotlib

    asked = os.environ.get("MPLBACKEND", "")
    if asked.lower() == NO_FIGURES.lower() or screen() is None or under_queueserver():
        matplotlib.use(NO_FIGURES)
        return NO_FIGURES
    problem = qt_problem()
    if problem is not None:
        log.warning("no figures: %s", problem)
        matplotlib.use(NO_FIGURES)
        return NO_FIGURES
    if asked and "qt" not in asked.lower():
        log.warning(
            "MPLBACKEND=%s replaced by %s: bluesky draws from its RunEngine thread through Qt only",
            asked,
            QT_BACKEND,
        )
    _use_qt(shell)
    return QT_BACKEND


def _use_qt(shell: Shell | None) -> None:
    import matplotlib
    import matplotlib.pyplot as plt
    from bluesky.callbacks.mpl_plotting import initialize_qt_teleporter

    if shell is not None:
        shell.enable_matplotlib("qt")
    else:
        matplotlib.use(QT_BACKEND)
    plt.ion()
    initialize_qt_teleporter()
