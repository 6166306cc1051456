"""One base exception with a subclass per domain.

Messages name the thing, the value, what was expected and what to do, e.g.
``ModelNotApprovedError("rule 'hn' routes to model 'hn-oar' 1.3.0, which is
'imported'; approve it with `contourd models approve hn-oar 1.3.0`")``.
"""


class ContourdError(Exception):
    """Base class of every error contourd raises on purpose."""


class ConfigError(ContourdError):
    """The configuration file is invalid (syntax, unknown key, bad value)."""


class SpoolError(ContourdError):
    """An instance could not be stored durably in the spool."""


class InvalidUIDError(ContourdError):
    """A DICOM UID is not a valid UID and must never be used as a path."""


class RoutingError(ContourdError):
    """A rule cannot be applied (unknown destination, model, ...)."""


class ModelPackageError(ContourdError):
    """A model package or its card is invalid, or holds forbidden content."""


class ModelNotFoundError(ContourdError):
    """No model with that name (and version) is in the registry."""


class ModelNotApprovedError(ContourdError):
    """The model version exists but is not approved for clinical routing."""


class ModelIntegrityError(ContourdError):
    """The weights' sha256 differs from the one recorded at import/approval."""


class ModelRegistryError(ContourdError):
    """The model registry refuses a change (duplicate version, wrong status, bad override)."""


class SeriesGeometryError(ContourdError):
    """A series cannot be turned into a volume (tilt, gaps, mixed orientation...)."""


class InferenceError(ContourdError):
    """The network or post-processing failed on a series."""


class OutputWriterError(ContourdError):
    """An RTSTRUCT or SEG could not be written from the masks."""


class DispatchError(ContourdError):
    """A result could not be sent to a destination."""


class JobError(ContourdError):
    """A job is in a state that does not allow the requested operation."""


class TrainingError(ContourdError):
    """A training dataset or run is invalid."""


class DatabaseError(ContourdError):
    """The database cannot be opened or its schema is not one this contourd can use."""


class WebAuthError(ContourdError):
    """A web or API user is unknown, gave a wrong password, or lacks the role for an action."""
