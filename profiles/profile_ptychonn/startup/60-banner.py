"""A short banner: what this session made, and one scan line to start from."""

# ruff: noqa: F821 (names made by the startup files before this one)

from pathlib import Path

from ptychonn_ophyd.catalog import resolve_location
from ptychonn_ophyd.paths import run_engine_metadata


def _model() -> str:
    """The model, or a warning that scans will fail without one."""
    model = inference.model.get()
    if not model:
        return "(none: set PTYCHONN_MODEL)"
    if not Path(model).is_file():
        return f"{model} (WARNING: no such file; set PTYCHONN_MODEL or inference.model.put(...))"
    return model


def _banner() -> str:
    """Names at the prompt, the model and backend, the catalog, and an example scan."""
    workers = inference.n_workers.get()
    return "\n".join(
        [
            f"ptychonn-ophyd: RE (scan ids in {run_engine_metadata()}), "
            f"det on {det.channel.get()}, motors sx sy, inference, catalog",
            f"model {_model()}, backend {inference.backend.get()}, "
            f"{workers} worker{'s' * (workers != 1)}",
            f"catalog {resolve_location()}",
            "try: RE(scan_with_inference(det, inference, sy, -1, 1, 9, sx, -1, 1, 9)); "
            "replay(-1, catalog)",
            f"live view {'on' if live_view.settings.enabled else 'off'}: "
            f"{live_view.settings.figure} figure, PVA {inference.output_prefix.get()}:mosaic",
        ]
    )


print(_banner())
