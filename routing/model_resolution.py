"""Turn a matched rule's model references into runnable, approved models.

Used at run time (the worker) and by ``contourd check``: a rule that names a
model with no approved version can never run; the error names the rule, the
model and the command that approves it (from the registry's message).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contourd.errors import ModelIntegrityError, ModelNotApprovedError, ModelNotFoundError
from routing.engine import RouteMatch

if TYPE_CHECKING:
    from model_store.approved import ApprovedModel
    from model_store.registry import ModelRegistry


def resolve_models(match: RouteMatch, registry: ModelRegistry) -> list[ApprovedModel]:
    """The approved models a matched rule runs, in the rule's order.

    ``name`` resolves to the newest approved version at call time,
    ``name@1.2.0`` to exactly that version (which must be approved).

    Raises
    ------
    ModelNotFoundError, ModelNotApprovedError, ModelIntegrityError
        Same type as the registry raised, with the rule's name in front of the
        registry's message (which says how to approve or import).
    """
    models = []
    for ref in match.models:
        try:
            models.append(registry.resolve_approved(ref.name, ref.version))
        except (ModelNotFoundError, ModelNotApprovedError, ModelIntegrityError) as err:
            raise type(err)(f"rule {match.rule!r} routes to model {str(ref)!r}: {err}") from err
    return models
