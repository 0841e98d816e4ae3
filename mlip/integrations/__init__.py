"""Thin adapters between mlip and other frameworks.

Each module imports its framework only when it is itself imported, so ``import mlip`` and
``import mlip.integrations`` never need an optional extra:

- :mod:`mlip.integrations.ase`: the ASE calculator (also ``mlip.calculator``).
- :mod:`mlip.integrations.torchsim`: a torch-sim model (``mlip[torchsim]``).
- :mod:`mlip.integrations.pyg`: mlip datasets as PyTorch Geometric datasets (``mlip[pyg]``).
"""
