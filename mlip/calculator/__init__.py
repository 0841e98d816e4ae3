"""The ASE calculator under its short import path (the class lives in :mod:`mlip.integrations.ase`)."""

from mlip.integrations.ase import (
    AtomsTooCloseError,
    MLIPCalculator,
    NonFiniteOutputError,
    UnknownElementError,
)

__all__ = ["MLIPCalculator", "UnknownElementError", "AtomsTooCloseError", "NonFiniteOutputError"]
