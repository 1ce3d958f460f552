"""The PtychoNN device on the detector's stream, its results stored with every run.

``connect`` gives every run that uses ``inference`` its inference stream and subscribes
the catalog's TiledWriter to ``RE``; the stream's documents come from the RunEngine
itself, so every subscriber sees them.  ``live_view`` stitches each scan as it runs,
each patch given its frame's tilt with the detector's probe: a figure where there is a
display, the ``<prefix>:mosaic`` PVA channel, and the final mosaic stored with the run
(``live_view.settings.enabled = False`` turns it off, ``live_view.settings.figure =
False`` only the figure).
"""

# ruff: noqa: F821 (names made by the startup files before this one)

import os

from ptychonn_ophyd.errors import ModelError
from ptychonn_ophyd.models.bundled import demo_model_path
from ptychonn_ophyd.session.device import PtychoNNDetector
from ptychonn_ophyd.session.live_view import LiveView
from ptychonn_ophyd.session.wiring import connect


def _model() -> str:
    if os.environ.get("PTYCHONN_MODEL"):
        return os.environ["PTYCHONN_MODEL"]
    try:
        return str(demo_model_path())
    except ModelError as err:
        print(f"{err}\nSet PTYCHONN_MODEL or inference.model.put('model.onnx') before a scan.")
        return ""


inference = PtychoNNDetector(
    name="inference",
    model=_model(),
    n_workers=int(os.environ.get("PTYCHONN_WORKERS", "1")),
    input_channel=det.channel.get(),
    output_prefix=det.channel.get().rsplit(":", 1)[0] + ":inference",
    source=det,
    keep_warm=True,  # scans after the first start at once; inference.shutdown() stops them
)
live_view = LiveView(
    probe=det.probe,  # each patch's tilt from its frame; a beamline gives probe="probe.npy"
    enabled=os.environ.get("PTYCHONN_LIVE_VIEW", "1") != "0",
    figure="auto",  # a window only where there is a display
)
catalog = connect(RE, inference, live_view=live_view)
progress.follow(inference)  # says when the workers start and are ready; fly scans' frames
"""``catalog[-1]`` is the latest run; ``catalog[uid]["inference"].read()`` its results."""
