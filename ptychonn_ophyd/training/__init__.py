"""Training PtychoNN on simulated ptychography, and judging it on the held-out object.

:func:`~ptychonn_ophyd.training.recipe.train` draws fresh random samples on the training
device (:mod:`~ptychonn_ophyd.training.sampler`), fits the network
(:mod:`~ptychonn_ophyd.training.fit`), reports each epoch's training and validation loss,
checks the held-out scan (:mod:`~ptychonn_ophyd.training.evaluation`), and writes the model
(``.pth`` and ONNX) with its recipe.  Only :mod:`~ptychonn_ophyd.training.config` is
imported here: the rest needs PyTorch.
"""

from ptychonn_ophyd.training.config import (
    PRESETS_TRAINED,
    TRAIN_OPTIONS,
    TrainingConfig,
    Variation,
)

__all__ = ["PRESETS_TRAINED", "TRAIN_OPTIONS", "TrainingConfig", "Variation"]
