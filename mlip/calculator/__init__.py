"""ASE calculator for mlip models."""

from mlip.calculator.calculator import (
    AtomsTooCloseError,
    MLIPCalculator,
    NonFiniteOutputError,
    UnknownElementError,
)

__all__ = ["MLIPCalculator", "UnknownElementError", "AtomsTooCloseError", "NonFiniteOutputError"]
