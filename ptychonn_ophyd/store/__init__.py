"""The results store: receives the workers' result batches and writes the runs' rows.

It runs in the session's process (the default) or in a process of its own
(``PtychoNNDetector(store_process=True)``): then the session handles each batch without
its images and answers which rows its run keeps, and this package's
:func:`~ptychonn_ophyd.store.relay.serve` receives the images and writes them, on a GIL
of its own.  It imports nothing of :mod:`ptychonn_ophyd.session` or
:mod:`ptychonn_ophyd.pool`.
"""
