"""Exceptions that users of ptychonn_ophyd catch, one per kind of failure."""


class ModelError(ValueError):
    """A model file is missing, unreadable, or not a PtychoNN model.

    The message always names the file and says what is wrong with it.
    """

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class FrameRejected(ValueError):
    """A detector frame cannot be turned into model input.

    ``reason`` is a short machine-readable key (``"shape"``, ``"dtype"``, ``"empty"``,
    ``"codec"``) under which the frame is counted; the message explains it.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BackendUnavailable(RuntimeError):
    """An inference backend cannot run here (library missing, no GPU, ...)."""
