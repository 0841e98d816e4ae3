"""LAMMPS integrations: the compiled pair style ``mlip`` and the ML-IAP unified object."""
