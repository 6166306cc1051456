"""Every error contourd raises on purpose: one base exception, grouped by domain.

Messages name the thing, the value, what was expected and what to do, e.g.
``ModelNotApprovedError("rule 'hn' routes to model 'hn-oar' 1.3.0, which is
'imported'; approve it with `contourd models approve hn-oar 1.3.0`")``.

No other module defines an exception class (``tests/test_dependency_directions.py``
checks it). The tree::

    ContourdError
    ├── ConfigError, DatabaseError                      (node-wide)
    ├── ReceiveError                                    (receive: C-STORE, STOW-RS)
    │   ├── SpoolError, InvalidUIDError
    │   ├── TruncatedDatasetError, SopMismatchError
    │   └── StowBodyError
    ├── RoutingError                                    (routing)
    │   └── SeriesFilesError
    ├── ModelError                                      (model store)
    │   ├── ModelPackageError, ModelRegistryError
    │   └── ModelNotFoundError, ModelNotApprovedError, ModelIntegrityError
    ├── InferenceError                                  (inference)
    │   ├── SeriesGeometryError
    │   └── OutputWriterError
    ├── TrainingError                                   (training)
    │   └── BlankImageError
    ├── JobError, DispatchError                         (jobs and delivery)
    │   └── LeaseLostError (a JobError)
    └── WebAuthError                                    (web users)
        └── NotLoggedInError

Catch the group (``except ModelError``) where any error of a domain is handled
alike. :func:`cli_error_exit` turns any error into the one line a command
prints.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

# -- base and node-wide ------------------------------------------------------------


class ContourdError(Exception):
    """Base class of every error contourd raises on purpose."""


class ConfigError(ContourdError):
    """The configuration file is invalid (syntax, unknown key, bad value)."""


class DatabaseError(ContourdError):
    """The database cannot be opened or its schema is not one this contourd can use."""


# -- receive (daemon.scp, daemon.spool, daemon.received_dataset, daemon.web.stow) ----


class ReceiveError(ContourdError):
    """An instance sent to the node cannot be accepted; the sender gets a failure status."""


class SpoolError(ReceiveError):
    """An instance could not be stored durably in the spool."""


class InvalidUIDError(ReceiveError):
    """A DICOM UID is not a valid UID and must never be used as a path."""


class TruncatedDatasetError(ReceiveError):
    """A received data set is shorter than its own element lengths say."""


class SopMismatchError(ReceiveError):
    """The data set's SOP Instance UID is not the one its C-STORE or STOW-RS part announced."""


class StowBodyError(ReceiveError):
    """A STOW-RS request body is not a multipart/related message (answered 400/415)."""


# -- routing -----------------------------------------------------------------------


class RoutingError(ContourdError):
    """A rule cannot be applied (unknown destination, model, ...)."""


class SeriesFilesError(RoutingError):
    """A series' spooled files cannot be read to route and run it (none is readable DICOM)."""


# -- model store -------------------------------------------------------------------


class ModelError(ContourdError):
    """A model package, the registry or an approved model refuses what was asked."""


class ModelPackageError(ModelError):
    """A model package or its card is invalid, or holds forbidden content."""


class ModelNotFoundError(ModelError):
    """No model with that name (and version) is in the registry."""


class ModelNotApprovedError(ModelError):
    """The model version exists but is not approved for clinical routing."""


class ModelIntegrityError(ModelError):
    """The weights' sha256 differs from the one recorded at import/approval."""


class ModelRegistryError(ModelError):
    """The model registry refuses a change (duplicate version, wrong status, bad override)."""


# -- inference ---------------------------------------------------------------------


class InferenceError(ContourdError):
    """The network or post-processing failed on a series."""


class SeriesGeometryError(InferenceError):
    """A series cannot be turned into a volume (tilt, gaps, mixed orientation...)."""


class OutputWriterError(InferenceError):
    """An RTSTRUCT or SEG could not be written from the masks."""


# -- training ----------------------------------------------------------------------


class TrainingError(ContourdError):
    """A training dataset or run is invalid."""


class BlankImageError(TrainingError):
    """A case's CT is blank (one value everywhere); the case is left out."""


# -- jobs and delivery -------------------------------------------------------------


class JobError(ContourdError):
    """A job is in a state that does not allow the requested operation."""


class LeaseLostError(JobError):
    """A worker tried to change a job whose lease it no longer holds."""


class DispatchError(ContourdError):
    """A result could not be sent to a destination."""


# -- web users ---------------------------------------------------------------------


class WebAuthError(ContourdError):
    """A web or API user is unknown, gave a wrong password, or lacks the role for an action."""


class NotLoggedInError(WebAuthError):
    """No user could be established for a request that needs one (answered 401 or a redirect)."""


# -- the one line a command ends with ------------------------------------------------


def cli_error_exit(prog: str, body: Callable[[], int], *, verbose: bool = False) -> int:
    """Run a command's body; any error ends as one message on stderr, never a traceback.

    Parameters
    ----------
    prog
        The command as the user typed it (``"contourd train"``), prefixed to the message.
    body
        The command; returns its exit code.
    verbose
        Also log the traceback of an unexpected error (``-v``).

    Returns
    -------
    int
        ``body``'s exit code; 1 after a :class:`ContourdError` or an ``OSError``
        (a missing or unreadable file: the message names it), 70 after any
        other exception (a bug: the message says so and how to see the
        traceback), 130 after Ctrl-C.
    """
    try:
        return int(body())
    except ContourdError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        print(f"{prog}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # boundary: a bug ends as one line too
        if verbose:
            logging.getLogger(__name__).exception("%s failed", prog)
        hint = "" if verbose else "; run it again with -v for the traceback"
        print(
            f"{prog}: internal error: {type(err).__name__}: {err} (a bug in contourd; "
            f"please report it{hint})",
            file=sys.stderr,
        )
        return 70
