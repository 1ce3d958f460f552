"""Code that runs inside a ``pvapy-hpc-consumer`` process: the PtychoNN processor and its parts.

Frames are decoded (:mod:`.frames`), preprocessed into whole-batch buffers
(:mod:`.batching`), inferred by the engine of :mod:`.engine_slot`, and published as
result NTNDArrays (:mod:`.output`); :mod:`.stats` counts every frame.  Nothing here
imports :mod:`ptychonn_ophyd.pool` or :mod:`ptychonn_ophyd.session`.
"""
