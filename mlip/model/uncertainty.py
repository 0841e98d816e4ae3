"""A single model's own uncertainty: last-layer prediction rigidity (LLPR).

The energy of every backbone is linear in its last layer: with g_i = scale * (f_i - f_iso[z_i])
the atom's READOUT_FEATURES (inputs of the readouts' last linear maps, :mod:`mlip.backbones.base`)
relative to a lone atom's, E = E0s + w . sum_i g_i. Treating the last weights w as the
posterior of a linear model fitted to the training atoms (Bigi et al., "A prediction rigidity
formalism for low-cost uncertainties in trained neural networks", 2024) gives

    sigma_E^2 = alpha_E^2 * G^T (A + r I)^-1 G,   G = sum_i g_i     (per structure)
    u_i^2     = alpha_F^2 * g_i^T (A + r I)^-1 g_i                  (per atom)

with A = sum over the training atoms of g g^T. u_i is the uncertainty of the atom's local
energy, the proxy of its force error: a rigorous force variance would need one backward pass
per last-layer weight. The regularisation r and the two scale factors are fitted on the
validation split (:func:`fit_last_layer`): r from a grid by the Gaussian negative
log-likelihood of the force errors, alpha_F^2 = mean(|dF_i|^2 / u_i^2) and likewise alpha_E,
so that predicted and actual squared errors agree on average. An isolated atom has exactly
zero uncertainty (its energy is E0 by construction); anything else a positive one.

Cost: one (N, P) x (P, P) product per call (P = 48 for the quickstart model), no extra
backward pass. Stored in the model file (``model_config["uncertainty"]`` and exact float64
buffers), so every adapter gets it from the file alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from mlip.data import keys
from mlip.ops.buffers import exact, register_exact
from mlip.ops.scatter import scatter_sum

# regularisation grid, relative to the mean eigenvalue of A
REGULARIZATION_GRID = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1e-1, 1.0)


class LastLayerUncertainty(nn.Module):
    """The fitted LLPR constants of a model and the uncertainty they give.

    Args:
        features: P, width of the backbone's READOUT_FEATURES.
        num_elements: S, elements of the model.

    Buffers (exact float64, in the state dict): ``inverse`` (P, P) = (A + r I)^-1,
    ``lone`` (S, P) lone-atom features, ``alpha`` (2,) = (alpha_E, alpha_F),
    ``regularization`` (1,) = r.
    """

    def __init__(self, features: int, num_elements: int) -> None:
        super().__init__()
        self.features = int(features)
        register_exact(self, "inverse", torch.zeros(features, features), persistent=True)
        register_exact(self, "lone", torch.zeros(num_elements, features), persistent=True)
        register_exact(self, "alpha", torch.zeros(2), persistent=True)
        register_exact(self, "regularization", torch.zeros(1), persistent=True)

    def settings(self) -> dict:
        """What the model file records to rebuild this module."""
        return {"method": "llpr", "features": self.features}

    def variances(self, readout_features: torch.Tensor, species: torch.Tensor,
                  batch: torch.Tensor, num_graphs: int, scale: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Uncalibrated (alpha = 1) variances, float64: (B,) per structure, (N,) per atom."""
        g = scale.double() * (readout_features.double() - exact(self, "lone")[species])
        inverse = exact(self, "inverse")
        atom = ((g @ inverse) * g).sum(-1).clamp_min(0.0)
        total = scatter_sum(g, batch, num_graphs)
        structure = ((total @ inverse) * total).sum(-1).clamp_min(0.0)
        return structure, atom

    def forward(self, readout_features: torch.Tensor, species: torch.Tensor, batch: torch.Tensor,
                num_graphs: int, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) energy uncertainty [eV] and (N,) per-atom force uncertainty [eV/Å], in the
        features' dtype."""
        structure, atom = self.variances(readout_features, species, batch, num_graphs, scale)
        alpha = exact(self, "alpha")
        dtype = readout_features.dtype
        return (alpha[0] * structure.sqrt()).to(dtype), (alpha[1] * atom.sqrt()).to(dtype)


MEAN_KEYS = (keys.ENERGY, keys.ATOMIC_ENERGIES, keys.FORCES, keys.STRESS, keys.VIRIAL)


def combine_committee(outs: list[dict[str, torch.Tensor]], alpha: tuple[float, float] = (1.0, 1.0)
                      ) -> dict[str, torch.Tensor]:
    """A committee's prediction from its members' outputs: the mean of ENERGY,
    ATOMIC_ENERGIES, FORCES, STRESS and VIRIAL (those every member returns), and

        ENERGY_UNCERTAINTY (B,) = alpha_E * std_k(E_k)                 [eV]
        FORCES_UNCERTAINTY (N,) = alpha_F * sqrt(sum_c var_k(F_k,ic))   [eV/Å]

    (sample standard deviations over the K members, ddof 1; alpha: the calibration factors
    fitted on a validation split, 1 when uncalibrated). Members' own uncertainties are
    dropped.
    """
    if len(outs) < 2:
        raise ValueError("a committee needs at least two members")
    result = {}
    for key in MEAN_KEYS:
        if all(key in o for o in outs):
            result[key] = torch.stack([o[key] for o in outs]).mean(0)
    energies = torch.stack([o[keys.ENERGY] for o in outs])
    dtype = outs[0][keys.FORCES].dtype if keys.FORCES in outs[0] else energies.dtype
    result[keys.ENERGY_UNCERTAINTY] = (alpha[0] * energies.std(0)).to(dtype)
    if keys.FORCES in result:
        forces = torch.stack([o[keys.FORCES] for o in outs])
        result[keys.FORCES_UNCERTAINTY] = alpha[1] * forces.var(0).sum(-1).sqrt()
    return result


def scale_factor(errors2: np.ndarray, variances: np.ndarray) -> float:
    """alpha with alpha^2 = mean(errors^2 / variances) over the entries with a positive
    variance: the maximum-likelihood scale of Gaussian variances, so that predicted and
    actual squared errors agree on average (0 when no variance is positive)."""
    ok = variances > 0
    return math.sqrt(float(np.mean(errors2[ok] / variances[ok]))) if ok.any() else 0.0


def _lone_features(potential: nn.Module) -> torch.Tensor:
    """(S, P) READOUT_FEATURES of a lone atom of each element (no edges)."""
    with torch.no_grad():
        return potential.backbone(potential.lone_atoms())[keys.READOUT_FEATURES].double()


def _relative_features(potential: nn.Module, out: dict[str, torch.Tensor], data: dict[str, torch.Tensor],
                       lone: torch.Tensor) -> torch.Tensor:
    species = potential.species_of(data[keys.ATOMIC_NUMBERS])
    return potential.scale.double() * (out[keys.READOUT_FEATURES].detach().double() - lone[species])


def gaussian_nll(errors2: np.ndarray, variances: np.ndarray) -> float:
    """Mean Gaussian negative log-likelihood (constants dropped) of squared errors under
    predicted variances."""
    v = np.maximum(variances, 1e-300)
    return float(0.5 * np.mean(np.log(v) + errors2 / v))


def fit_last_layer(potential: nn.Module, train_batches: Iterable[dict[str, torch.Tensor]],
                   val_batches: Iterable[dict[str, torch.Tensor]]) -> dict:
    """Fit the LLPR constants of ``potential`` (in place: sets ``potential.uncertainty``).

    Args:
        potential: a single-head Potential whose backbone declares READOUT_FEATURES; put in
            eval mode for the passes.
        train_batches: batch dicts of the training split (on the model's device): A.
        val_batches: batch dicts of the validation split with ENERGY/FORCES labels: the
            regularisation and the scale factors.

    Returns:
        dict with regularization (relative to the mean eigenvalue), alpha_energy,
        alpha_forces, training atoms and validation structures/atoms used.

    Raises:
        ValueError: a multi-head model, a backbone without READOUT_FEATURES, or no labelled
            validation forces.
    """
    if potential.heads:
        raise ValueError(f"the model has the heads {potential.heads}: fit the uncertainty of a "
                         "single-head file (mlip export head)")
    width = potential.backbone.outputs.readout_features
    if not width:
        raise ValueError(f"{type(potential.backbone).__name__} declares no READOUT_FEATURES: "
                         "no last-layer uncertainty")
    training = potential.training
    potential.eval()
    potential.uncertainty = None
    lone = _lone_features(potential)
    a = torch.zeros(width, width, dtype=torch.float64, device=lone.device)
    train_atoms = 0
    for data in train_batches:
        with torch.no_grad():
            out = potential(data, compute_forces=False)
        g = _relative_features(potential, out, data, lone)
        a += g.T @ g
        train_atoms += g.shape[0]
    atom_g, struct_g, f_err2, e_err2 = [], [], [], []
    for data in val_batches:
        with torch.enable_grad():
            out = potential(data, compute_forces=True)
        g = _relative_features(potential, out, data, lone)
        batch, graphs = data[keys.BATCH], data[keys.CELL].shape[0]
        fmask = data[keys.FORCES_MASK][batch].bool()
        err = (out[keys.FORCES].detach() - data[keys.FORCES]).double()
        atom_g.append(g[fmask])
        f_err2.append((err[fmask] ** 2).sum(-1))
        emask = data[keys.ENERGY_MASK].bool()
        struct_g.append(scatter_sum(g, batch, graphs)[emask])
        e_err2.append((out[keys.ENERGY].detach().double() - data[keys.ENERGY].double())[emask] ** 2)
    if not atom_g or sum(x.shape[0] for x in atom_g) == 0:
        raise ValueError("the validation split has no force labels: cannot calibrate the uncertainty")
    atom_g, struct_g = torch.cat(atom_g), torch.cat(struct_g)
    f_err2, e_err2 = torch.cat(f_err2).cpu().numpy(), torch.cat(e_err2).cpu().numpy()
    eigenvalues, vectors = torch.linalg.eigh(a)
    eigenvalues = eigenvalues.clamp_min(0.0)
    mean_eig = float(eigenvalues.mean()) or 1.0
    best = None
    for rel in REGULARIZATION_GRID:
        inverse = (vectors / (eigenvalues + rel * mean_eig)) @ vectors.T
        v_atom = ((atom_g @ inverse) * atom_g).sum(-1).cpu().numpy()
        ok = v_atom > 0
        alpha_f2 = scale_factor(f_err2, v_atom) ** 2
        nll = gaussian_nll(f_err2[ok], alpha_f2 * v_atom[ok])
        if best is None or nll < best[0]:
            best = (nll, rel, inverse, alpha_f2)
    _, rel, inverse, alpha_f2 = best
    alpha_e = 0.0
    if struct_g.shape[0]:
        v_struct = ((struct_g @ inverse) * struct_g).sum(-1).cpu().numpy()
        alpha_e = scale_factor(e_err2, v_struct)
    module = LastLayerUncertainty(width, len(potential.atomic_numbers)).to(lone.device)
    exact(module, "inverse").copy_(inverse)
    exact(module, "lone").copy_(lone)
    exact(module, "alpha").copy_(torch.tensor([alpha_e, math.sqrt(alpha_f2)], dtype=torch.float64))
    exact(module, "regularization").fill_(rel * mean_eig)
    potential.uncertainty = module
    potential.train(training)
    return {"method": "llpr", "regularization": rel, "alpha_energy": alpha_e,
            "alpha_forces": math.sqrt(alpha_f2), "train_atoms": train_atoms,
            "val_structures": int(struct_g.shape[0]), "val_atoms": int(atom_g.shape[0])}
