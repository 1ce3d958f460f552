"""Ptychography physics: objects, probe, scan paths and far-field diffraction.

These need only NumPy and scikit-image; :mod:`ptychonn_ophyd.sim` serves them as a
detector and :mod:`ptychonn_ophyd.training` makes training sets from them.
"""
