"""The PtychoNN device on the detector's stream, and the callback that stores its results.

The callback goes between the RunEngine and the catalog writer so that the inference
stream lands in the same run; BestEffortCallback (subscribed to RE directly) sees only
the RunEngine's own documents.
"""

# ruff: noqa: F821 (names made by the startup files before this one)

import os

from ptychonn_ophyd.callbacks import InferenceCallback
from ptychonn_ophyd.catalog import assets_directory, catalog_writer
from ptychonn_ophyd.device import PtychoNNDetector
from ptychonn_ophyd.errors import ModelError
from ptychonn_ophyd.models.bundled import demo_model_path


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
)
inference_callback = InferenceCallback(inference, assets_directory())
inference_callback.subscribe(catalog_writer(catalog))
RE.subscribe(inference_callback)
