"""The one way to turn model references into runnable models.

Every caller resolves through here: the worker (a routed rule's models),
``contourd check`` (every rule's models, before the daemon uses a config),
``contourd segment`` (``-m MODEL[@VERSION]``) and ``contourd evaluate``
(``-m`` from the registry, any status). ``name`` means the newest approved
version at call time, ``name@1.2.0`` exactly that version, which must be
approved; the registry checks the files against the sha256 recorded at
approval (:meth:`model_store.registry.ModelRegistry.resolve`) once per call.

A reference is anything with ``name`` and ``version`` (``routing.rules.ModelRef``
is one), so this module needs nothing from routing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from contourd.errors import ModelIntegrityError, ModelNotApprovedError, ModelNotFoundError

if TYPE_CHECKING:
    from model_store.approved import ApprovedModel
    from model_store.registry import ModelRegistry

RESOLUTION_ERRORS = (ModelNotFoundError, ModelNotApprovedError, ModelIntegrityError)
"""What resolving a reference can raise (each a :class:`contourd.errors.ContourdError`)."""


class ModelReference(Protocol):
    """A model name and, when pinned, a version (``None``: newest approved)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str | None: ...


def reference_text(ref: ModelReference) -> str:
    """``"name"`` or ``"name@version"``, as a rule or ``-m`` writes it."""
    return ref.name if ref.version is None else f"{ref.name}@{ref.version}"


def resolve_model(
    registry: ModelRegistry,
    ref: ModelReference,
    *,
    rule: str | None = None,
    require_approved: bool = True,
) -> ApprovedModel:
    """The model ``ref`` names, hash-checked.

    Parameters
    ----------
    registry
        The data folder's registry.
    ref
        Name and optional version.
    rule
        The rule that names the model; when given, its name and the reference
        go in front of the registry's message.
    require_approved
        ``True`` (routing, ``segment``, ``check``): only approved versions.
        ``False`` (``evaluate`` before approval): any status, ``version=None``
        is the newest version.

    Raises
    ------
    ModelNotFoundError, ModelNotApprovedError, ModelIntegrityError
        The registry's error (which says how to import or approve), of the
        same type, prefixed with ``rule '<rule>' routes to model '<ref>': ``
        when ``rule`` is given.
    """
    try:
        return registry.resolve(ref.name, ref.version, require_approved=require_approved)
    except RESOLUTION_ERRORS as err:
        if rule is None:
            raise
        raise type(err)(f"rule {rule!r} routes to model {reference_text(ref)!r}: {err}") from err


def resolve_models(
    registry: ModelRegistry,
    refs: Iterable[ModelReference],
    *,
    rule: str | None = None,
    require_approved: bool = True,
) -> list[ApprovedModel]:
    """:func:`resolve_model` for each reference, in order (the first failure raises)."""
    return [
        resolve_model(registry, ref, rule=rule, require_approved=require_approved) for ref in refs
    ]
