"""Loss and error metrics on batches with label masks.

Metric sums are accumulated as one tensor per epoch so they can be reduced over DDP ranks
with a single all-reduce before MAE/RMSE are formed.
"""

from __future__ import annotations

import torch

from mlip.data import keys

# Order of the entries in a metric-sum vector.
SUM_FIELDS = (
    "e_abs", "e_sq", "epa_abs", "epa_sq", "n_e",
    "f_abs", "f_sq", "n_f",
    "s_abs", "s_sq", "n_s",
)


def stage_weights(data: dict[str, torch.Tensor], stage_two: bool) -> dict[str, torch.Tensor]:
    """The batch with the current stage's per-structure loss weights as LOSS_WEIGHT: in stage
    two, LOSS_WEIGHT_STAGE_TWO where the batch has one (``data.extra`` files' stage-two
    weights); otherwise the batch unchanged."""
    if stage_two and keys.LOSS_WEIGHT_STAGE_TWO in data:
        return {**data, keys.LOSS_WEIGHT: data[keys.LOSS_WEIGHT_STAGE_TWO]}
    return data


def weighted_loss(
    pred: dict[str, torch.Tensor],
    ref: dict[str, torch.Tensor],
    energy_weight: float,
    forces_weight: float,
    stress_weight: float,
    normalisers: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """MSE of per-atom energy, force components and stress components, masked by labels,
    each structure's squared errors times its LOSS_WEIGHT where the batch has one, its
    force errors also times its LOSS_WEIGHT_FORCES (the divisors stay the label counts, so
    weight 2 counts a structure twice).

    Args:
        normalisers: ``{"structures", "atoms"}`` per batch, constants of the run (atom-budget
            batching, :meth:`~mlip.training.batching.StructureBatchSampler.loss_normalisers`):
            sums of squared errors are divided by these instead of by the batch's own label
            counts, so the epoch's summed loss does not depend on how structures were grouped.
            None: the batch's means.

    Returns:
        dict with 'loss' and its parts 'loss_e', 'loss_f', 'loss_s' (scalars).
    """
    natoms = ref[keys.NUM_ATOMS].to(pred[keys.ENERGY].dtype)
    weight = ref.get(keys.LOSS_WEIGHT)
    e_mask = ref[keys.ENERGY_MASK] if weight is None else ref[keys.ENERGY_MASK] * weight
    f_struct = ref[keys.FORCES_MASK] if weight is None else ref[keys.FORCES_MASK] * weight
    if keys.LOSS_WEIGHT_FORCES in ref:
        f_struct = f_struct * ref[keys.LOSS_WEIGHT_FORCES]
    de = (pred[keys.ENERGY] - ref[keys.ENERGY]) / natoms
    per_structure = ref[keys.ENERGY_MASK].sum().clamp(min=1) if normalisers is None else normalisers["structures"]
    loss_e = (e_mask * de.square()).sum() / per_structure
    total = energy_weight * loss_e
    parts = {"loss_e": loss_e}
    if keys.FORCES in pred:
        f_mask = f_struct[ref[keys.BATCH]].unsqueeze(-1)
        df = pred[keys.FORCES] - ref[keys.FORCES]
        labelled = ref[keys.FORCES_MASK][ref[keys.BATCH]]
        per_atom = labelled.sum().clamp(min=1) if normalisers is None else normalisers["atoms"]
        loss_f = (f_mask * df.square()).sum() / (3 * per_atom)
        total = total + forces_weight * loss_f
        parts["loss_f"] = loss_f
    if keys.STRESS in pred and stress_weight > 0:
        s_struct = ref[keys.STRESS_MASK] if weight is None else ref[keys.STRESS_MASK] * weight
        s_mask = s_struct[:, None, None]
        ds = pred[keys.STRESS] - ref[keys.STRESS]
        stressed = ref[keys.STRESS_MASK].sum().clamp(min=1) if normalisers is None else normalisers["structures"]
        loss_s = (s_mask * ds.square()).sum() / (9 * stressed)
        total = total + stress_weight * loss_s
        parts["loss_s"] = loss_s
    parts["loss"] = total
    return parts


@torch.no_grad()
def metric_sums(pred: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> torch.Tensor:
    """(len(SUM_FIELDS),) float64 sums of absolute and squared errors and label counts."""
    e_mask = ref[keys.ENERGY_MASK].double()
    de = (pred[keys.ENERGY] - ref[keys.ENERGY]).double() * e_mask
    natoms = ref[keys.NUM_ATOMS].double()
    out = [de.abs().sum(), de.square().sum(), (de / natoms).abs().sum(),
           (de / natoms).square().sum(), e_mask.sum()]
    if keys.FORCES in pred:
        f_mask = ref[keys.FORCES_MASK][ref[keys.BATCH]].double().unsqueeze(-1)
        df = (pred[keys.FORCES] - ref[keys.FORCES]).double() * f_mask
        out += [df.abs().sum(), df.square().sum(), 3 * f_mask.sum()]
    else:
        out += [de.new_zeros(())] * 3
    if keys.STRESS in pred:
        s_mask = ref[keys.STRESS_MASK].double()[:, None, None]
        ds = (pred[keys.STRESS] - ref[keys.STRESS]).double() * s_mask
        out += [ds.abs().sum(), ds.square().sum(), 9 * s_mask.sum()]
    else:
        out += [de.new_zeros(())] * 3
    return torch.stack(out)


def summarize(sums: torch.Tensor) -> dict[str, float]:
    """MAE/RMSE in meV, meV/atom, meV/Å and meV/Å^3 from reduced sums (absent labels omitted)."""
    s = dict(zip(SUM_FIELDS, sums.double().tolist(), strict=True))
    out: dict[str, float] = {}
    if s["n_e"] > 0:
        out["e_mae"] = 1000 * s["e_abs"] / s["n_e"]
        out["e_rmse"] = 1000 * (s["e_sq"] / s["n_e"]) ** 0.5
        out["e_mae_per_atom"] = 1000 * s["epa_abs"] / s["n_e"]
        out["e_rmse_per_atom"] = 1000 * (s["epa_sq"] / s["n_e"]) ** 0.5
    if s["n_f"] > 0:
        out["f_mae"] = 1000 * s["f_abs"] / s["n_f"]
        out["f_rmse"] = 1000 * (s["f_sq"] / s["n_f"]) ** 0.5
    if s["n_s"] > 0:
        out["s_mae"] = 1000 * s["s_abs"] / s["n_s"]
        out["s_rmse"] = 1000 * (s["s_sq"] / s["n_s"]) ** 0.5
    return out
