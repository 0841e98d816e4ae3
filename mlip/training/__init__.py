"""Training: Lightning module, data module, metrics, EMA, the run driver.

Importing this package imports nothing; the modules that need Lightning import it through
:mod:`mlip.training.lightning_import`, which leaves the process's environment and random
state as they were.
"""
