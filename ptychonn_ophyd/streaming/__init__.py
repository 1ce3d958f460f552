"""The parts of the streaming processor: arguments, frames, batching, engines, outputs, stats.

:mod:`ptychonn_ophyd.processor` wires them into the pvapy processor class and
:mod:`ptychonn_ophyd.pool` starts and watches the processes that run it.
"""
