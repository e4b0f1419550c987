"""The package's exceptions: one base class, a few typed subclasses.

Messages follow the form ``"<what> | received X, expected Y"`` so a user sees at once what was
wrong with their input and what would have been accepted.
"""


class SeqrecError(Exception):
    """Base class of every error this package raises on purpose."""


class SchemaError(SeqrecError):
    """An input table lacks a column, has the wrong type, or holds nulls where ids are required."""


class DataError(SeqrecError):
    """Input data is readable but unusable (empty, unknown format, too short to split)."""


class ConfigError(SeqrecError):
    """A configuration value is out of range or inconsistent with another."""


class CheckpointError(SeqrecError):
    """A checkpoint directory is missing a file or was written by an incompatible version."""


class ModelInputError(SeqrecError, ValueError):
    """Tensors handed to a model lack the shape, dtype or id range it takes."""


class ExportError(SeqrecError):
    """A model could not be exported, or an exported bundle is missing, invalid or incompatible."""


class ExportMismatchError(ExportError):
    """An exported graph disagrees with PyTorch beyond the stated tolerance."""


class ScoringFailedError(SeqrecError):
    """A scoring job stopped part way (a Ray actor raised or died): the parts it finished are kept for --resume."""


class OutputWriteError(ScoringFailedError):
    """A scoring job could not write its output (disk full, a file-size limit, permission lost): the parts it
    committed are kept, nothing half written is left, and --resume scores the rest once the cause is fixed."""


class TrainingDivergedError(SeqrecError):
    """The training loss became NaN or infinite: the weights can no longer learn."""


class MissingDependencyError(SeqrecError, ImportError):
    """An optional dependency (onnxruntime, tensorrt, triton, ray) is not installed or has no device."""


def received_expected(what: str, received: object, expected: object) -> str:
    """Format the standard boundary-error message."""
    return f"{what} | received {received}, expected {expected}"
