"""The stable class path of the PtychoNN processor, as the seed's command line names it.

``pvapy-hpc-consumer --processor-class ptychonn_ophyd.processor.InferPtychoNNImageProcessor``
keeps working whatever the package layout; the processor itself lives in
:mod:`ptychonn_ophyd.worker.processor`, with the rest of the code that runs inside the
consumer process.
"""

from ptychonn_ophyd.worker.processor import InferPtychoNNImageProcessor

__all__ = ["InferPtychoNNImageProcessor"]
