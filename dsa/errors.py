"""The one exception hierarchy of dsa.

Every error a user can cause is a :class:`DsaError`; its message says what was wrong and what to do.
The CLI turns any ``DsaError`` into a one-line message on stderr and exit code 1.
"""

from __future__ import annotations


class DsaError(Exception):
    """Base class of every error dsa raises on purpose."""


class InternalError(DsaError):
    """An invariant of dsa itself does not hold: a bug, not a user error (the message says to report it)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"internal error: {message} (this is a bug in dsa; please report it with the command line)")


class ModelError(DsaError):
    """A model name, factory or checkpoint could not be resolved or loaded."""


class AnalysisError(DsaError):
    """A network could not be traced or analysed."""


class ArtifactError(DsaError):
    """A saved artifact (plan, profile, checkpoint, device file) is corrupted or of an unknown version."""


class PlanError(DsaError):
    """A plan cannot be made or does not fit: an unreachable target, contradicting planner options, a plan for
    another model or naming unknown activations."""


class PlanFileError(PlanError, ArtifactError):
    """A plan file is malformed or of an unknown version (a :class:`PlanError` and an :class:`ArtifactError`)."""


class OutputError(ArtifactError):
    """An output cannot be written where it was asked for (a directory, no permission, a read-only file system,
    the same path as an input). Checked before long work starts; nothing is replaced when it is raised."""


class InterruptedRunError(DsaError):
    """The user interrupted a command (Ctrl-C); the message says what was kept and how to continue."""


class MergeError(DsaError):
    """A segment could not be merged."""


class MergeVerificationError(MergeError):
    """The merged network does not match the merge-ready network numerically."""


class ExportError(DsaError):
    """TorchScript or ONNX export failed or did not match."""


class DataError(DsaError):
    """A dataset could not be found, read or split (wrong --data, missing train/ or val/, no images)."""


class TrainingError(DsaError):
    """Training cannot start or continue (non-finite loss, a checkpoint that does not fit the run)."""
