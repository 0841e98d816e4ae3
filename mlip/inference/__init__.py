"""The inference engine (:class:`ForceField`) and what it refuses (:mod:`mlip.inference.errors`)."""

from mlip.inference.engine import ForceField, TrackedSystems
from mlip.inference.errors import AtomsTooCloseError, NonFiniteOutputError, UnknownElementError

__all__ = ["ForceField", "TrackedSystems", "AtomsTooCloseError", "NonFiniteOutputError",
           "UnknownElementError"]
