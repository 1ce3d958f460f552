"""Runs written straight into a catalog, without a beamline, as tests need them."""

import time
from pathlib import Path

import numpy as np
from event_model import ComposeStreamResource, compose_run

from ptychonn_ophyd.catalog import catalog_writer
from ptychonn_ophyd.session.writer import StreamSpec
from ptychonn_ophyd.store.file import InferenceFile


def write_run(catalog, assets: Path, n: int = 5, metadata: dict | None = None) -> str:
    """Write a run with one primary event and an HDF5-backed inference stream of ``n``
    8x8 rows, as no worker made them (no descriptor: no consumer, model or input
    moments); returns its uid.  ``metadata`` goes into its start document."""
    writer = catalog_writer(catalog)
    bundle = compose_run(metadata={"purpose": "test", **(metadata or {})})
    writer("start", bundle.start_doc)
    primary = bundle.compose_descriptor(
        name="primary", data_keys={"m": {"source": "sim", "dtype": "number", "shape": []}}
    )
    writer("descriptor", primary.descriptor_doc)
    writer("event", primary.compose_event(data={"m": 1.0}, timestamps={"m": time.time()}))
    rows = {
        "phase": np.stack([np.full((8, 8), i, np.float32) for i in range(n)]),
        "unique_id": np.arange(1, n + 1),
        "consumer_id": np.full(n, -1),
        "model": np.zeros(n, np.int64),
        "latency": np.full(n, np.nan),
        "x": 0.1 * np.arange(n),
        "y": np.zeros(n),
        "point": np.full(n, -1),
        "frame_time": np.full(n, time.time()),
        "input_total": np.full(n, np.nan),
        "input_centroid_x": np.full(n, np.nan),
        "input_centroid_y": np.full(n, np.nan),
    }
    spec = StreamSpec("inference", "test", (8, 8), False, {}, {})
    file = InferenceFile(assets / f"{bundle.start_doc['uid']}.h5", spec.layout)
    keys = spec.data_keys()
    inference = bundle.compose_descriptor(name="inference", data_keys=keys)
    writer("descriptor", inference.descriptor_doc)
    datums = {}
    for key in keys:
        resource = ComposeStreamResource(start=bundle.start_doc)(
            "application/x-hdf5",
            file.path.as_uri(),
            key,
            {"dataset": f"/{key}", "swmr": True, "chunk_shape": spec.chunk_shape(key)},
        )
        writer("stream_resource", resource.stream_resource_doc)
        datums[key] = resource.compose_stream_datum
    start, stop = file.append(rows)
    for compose in datums.values():
        writer(
            "stream_datum",
            compose(
                indices={"start": start, "stop": stop},
                seq_nums={"start": start + 1, "stop": stop + 1},
                descriptor=inference.descriptor_doc,
            ),
        )
    file.close()
    writer("stop", bundle.compose_stop())
    return bundle.start_doc["uid"]
