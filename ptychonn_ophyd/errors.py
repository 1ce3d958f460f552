"""Exceptions that users of ptychonn_ophyd catch, one per kind of failure.

Each is a :class:`PtychoNNError` as well as the built-in kind it is (a ``ModelError`` is
a ``ValueError``), so callers may catch either.
"""


class PtychoNNError(Exception):
    """A failure whose message is written for the user as it stands: it names what is
    wrong.  The command line prints it as one ``error:`` line, without a traceback."""


class ModelError(PtychoNNError, ValueError):
    """A model file is missing, unreadable, or not a PtychoNN model.

    The message always names the file and says what is wrong with it.
    """

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class FrameRejected(PtychoNNError, ValueError):
    """A detector frame cannot be turned into model input.

    ``reason`` is a short machine-readable key (``"shape"``, ``"dtype"``, ``"empty"``,
    ``"codec"``, ``"nonfinite"``: :data:`~ptychonn_ophyd.wire.REJECT_REASONS`) under which
    the frame is counted; the message explains it.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class OnnxWireError(PtychoNNError, ValueError):
    """Bytes that are not an ONNX model's protobuf message, as
    :mod:`~ptychonn_ophyd.models.onnx_wire` reads it (``open_model`` turns it into a
    :class:`ModelError` naming the file)."""


class BackendUnavailable(PtychoNNError, RuntimeError):
    """An inference backend cannot run here (library missing, no GPU, ...)."""


class ArgsError(PtychoNNError, ValueError):
    """Settings that cannot be used; the message is one line naming each bad key."""


class ControlError(PtychoNNError, RuntimeError):
    """A worker's control channel refused a command or did not answer."""


class PoolStartError(PtychoNNError, RuntimeError):
    """A worker did not get ready, or (attached) does not make the pool asked for; the
    message names it and quotes its last log lines, or names its host and the setting."""


class WorkerDiedError(PtychoNNError, RuntimeError):
    """A worker process ended while the pool ran, or (attached) fell silent or restarted;
    the message names it, and quotes its last log lines or names its host."""


class ResultStoreError(PtychoNNError, RuntimeError):
    """The results store process (``store_process``) did not start, ended, or could not
    write a run's rows; the message says which, and what it was doing."""


class InferenceTimeoutError(PtychoNNError, TimeoutError):
    """Frames the source produced were not inferred in time; ``missing`` holds their ids."""

    def __init__(self, name: str, missing: list[int], waited: float, lost: int) -> None:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        super().__init__(
            f"{name}: {len(missing)} frame(s) not inferred, and no result for {waited:.1f} s "
            f"(pool counts {lost} dropped or rejected): uniqueId {shown}"
        )
        self.missing = missing


class StreamWiringError(PtychoNNError, RuntimeError):
    """The inference stream would be lost or written twice; the message says how to wire it."""


class CatalogError(PtychoNNError, RuntimeError):
    """The catalog cannot be used (a folder or database that cannot be written, ...);
    the message is one line naming the path."""


class StorageFullError(PtychoNNError, OSError):
    """The catalog's disk has too little room left to store more results and still close
    the run; the message is one line naming the path and the room left."""


class CatalogNotFoundError(PtychoNNError, LookupError):
    """A catalog to read from does not exist; the message names where it was looked for."""


class RunLookupError(PtychoNNError, LookupError):
    """No run, or more than one, matches what was asked; the message names the catalog."""
