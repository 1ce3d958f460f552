"""Ptychography physics: objects, probe, scan paths and far-field diffraction.

These need only NumPy and scikit-image; :mod:`ptychonn_ophyd.sim` serves them as a
detector.  :mod:`~ptychonn_ophyd.physics.forward_torch` is the same forward model on
torch tensors, with which :mod:`ptychonn_ophyd.training` draws its frames on the GPU.
"""
