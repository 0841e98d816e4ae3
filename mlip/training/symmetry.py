"""Rotations for training: data augmentation and the learned-equivariance objective.

The objective compares the embedding Z of a structure's rotated copy, Z(R x), with a
transformation T(R) of the original's, T_R(Z(x)) (:class:`RotationTransform`):

- ``wigner``: T_R(Z) = Z D(R)^T, the Wigner-D action on each degree block (no parameters);
- ``wigner_mix`` (ours; the paper learns a network of R and is silent on its form): each
  degree block additionally mixed over channels by a matrix M_l(R) = 1 + MLP_l(R) emitted
  from the flattened rotation matrix and trained jointly with the model (the last layer
  starts at zero, so training starts from the pure Wigner-D action).

Two forms of the loss (``training.symmetry.equivariance.objective``): ``regression``
(:func:`equivariance_loss`, per-degree normalised squared error) and ``contrastive``
(:func:`contrastive_equivariance_loss`, InfoNCE: each atom's transformed embedding must pick
out its own rotated copy among all atoms of the batch). The weight follows a schedule over
the training budget (:func:`equivariance_weight`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlip.backbones.base import BackboneOutputs
from mlip.data import keys
from mlip.ops.sh import num_components, wigner_d


def rotate_batch(data: dict[str, torch.Tensor], rotations: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rotate positions, cells and the vector/tensor labels of every structure.

    Args:
        data: batch dict.
        rotations: (B, 3, 3), one per structure; x -> R x.
    """
    out = dict(data)
    r = rotations.to(data[keys.POSITIONS].dtype)
    r_atom = r[data[keys.BATCH]]
    out[keys.POSITIONS] = torch.einsum("nij,nj->ni", r_atom, data[keys.POSITIONS])
    out[keys.CELL] = data[keys.CELL] @ r.transpose(1, 2)
    if keys.FORCES in data:
        out[keys.FORCES] = torch.einsum("nij,nj->ni", r_atom, data[keys.FORCES])
    if keys.STRESS in data:
        out[keys.STRESS] = r @ data[keys.STRESS] @ r.transpose(1, 2)
    return out


# The names the config accepts (training.symmetry.equivariance.*; validated on loading by
# mlip.training.schema); the objectives' table is OBJECTIVES, below the loss functions.
TRANSFORMS = ("wigner", "wigner_mix")
SCHEDULES = ("constant", "warmup", "warmup_decay")


class RotationTransform(nn.Module):
    """T(R) on an (N, C, (L+1)^2) embedding: the Wigner-D action, optionally followed by a
    learned per-degree channel mixing M_l(R) (``kind="wigner_mix"``, see the module doc).

    Args:
        channels: C.
        lmax: L.
        kind: "wigner" or "wigner_mix".
        hidden: width of the MLP that emits the mixing matrices from R.
    """

    def __init__(self, channels: int, lmax: int, kind: str = "wigner", hidden: int = 64) -> None:
        super().__init__()
        if kind not in TRANSFORMS:
            raise ValueError(f"training.symmetry.equivariance.transform must be one of {TRANSFORMS}, got {kind!r}")
        self.channels, self.lmax, self.kind = int(channels), int(lmax), kind
        self.net = None
        if kind == "wigner_mix":
            last = nn.Linear(hidden, (lmax + 1) * channels * channels)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.net = nn.Sequential(nn.Linear(9, hidden), nn.SiLU(), last)

    def forward(self, embedding: torch.Tensor, rotations: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """T_R(Z) for each atom, with R the rotation of its structure ((B, 3, 3), batch (N,))."""
        d = wigner_d(self.lmax, rotations.double()).to(embedding)
        assert d.shape[-1] == num_components(self.lmax) == embedding.shape[-1]
        out = torch.einsum("ncj,nkj->nck", embedding, d[batch])
        if self.net is None:
            return out
        c = self.channels
        mix = self.net(rotations.reshape(-1, 9).to(embedding)).view(-1, self.lmax + 1, c, c)
        mix = mix + torch.eye(c, dtype=mix.dtype, device=mix.device)
        per_atom = mix[batch]
        return torch.cat([torch.einsum("nab,nbk->nak", per_atom[:, l], out[..., l * l:(l + 1) ** 2])
                          for l in range(self.lmax + 1)], dim=-1)


def _per_degree_unit(embedding: torch.Tensor, lmax: int) -> torch.Tensor:
    """(N, C, D) -> (N, C*D): each degree block scaled to unit norm per atom, the
    concatenation divided by sqrt(L+1), so every degree weighs the same in a cosine."""
    blocks = [F.normalize(embedding[..., l * l:(l + 1) ** 2].reshape(embedding.shape[0], -1), dim=1,
                          eps=1e-12) for l in range(lmax + 1)]
    return torch.cat(blocks, dim=1) / math.sqrt(lmax + 1)


def contrastive_equivariance_loss(
    embedding: torch.Tensor, embedding_rotated: torch.Tensor, rotations: torch.Tensor,
    batch: torch.Tensor, lmax: int, transform: RotationTransform | None = None,
    temperature: float = 0.1, max_atoms: int = 2048,
) -> torch.Tensor:
    """InfoNCE over the atoms of the batch: the similarity matrix S_nm = <u_n, v_m> / tau of
    u = T_R(Z(x)) and v = Z(R x) (each degree block unit-normalised, see
    :func:`_per_degree_unit`) must pick m = n; symmetric cross-entropy (rows and columns).

    The mean over atoms makes it independent of the batch order. Above ``max_atoms`` atoms
    an evenly spaced subset (deterministic) keeps the N x N matrix small.
    """
    target = (transform or RotationTransform(embedding.shape[1], lmax))(embedding, rotations, batch)
    n = target.shape[0]
    if n > max_atoms:
        keep = torch.linspace(0, n - 1, max_atoms, device=target.device).round().long()
        target, embedding_rotated = target[keep], embedding_rotated[keep]
        n = max_atoms
    u = _per_degree_unit(target, lmax)
    v = _per_degree_unit(embedding_rotated, lmax)
    logits = u @ v.T / temperature
    labels = torch.arange(n, device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def equivariance_weight(weight: float, schedule: str, fraction: float, warmup: float = 0.1,
                        final: float = 0.1) -> float:
    """The objective's weight at ``fraction`` of the training budget: ``constant``;
    ``warmup``, linear from 0 over the first ``warmup`` fraction; ``warmup_decay``, that
    warm-up, then a cosine decay to ``final`` x weight at the end of the budget."""
    if schedule not in SCHEDULES:
        raise ValueError(f"training.symmetry.equivariance.schedule must be one of {SCHEDULES}, got {schedule!r}")
    fraction = min(max(float(fraction), 0.0), 1.0)
    if schedule == "constant":
        return weight
    if fraction < warmup:
        return weight * fraction / warmup
    if schedule == "warmup":
        return weight
    rest = (fraction - warmup) / max(1.0 - warmup, 1e-12)
    return weight * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * rest)))


def equivariance_loss(
    embedding: torch.Tensor, embedding_rotated: torch.Tensor, rotations: torch.Tensor,
    batch: torch.Tensor, lmax: int, transform: RotationTransform | None = None,
) -> torch.Tensor:
    """sum over degrees l of || Z_l(R x) - T_R(Z(x))_l ||^2 / || Z_l(x) ||^2 (means over
    atoms, channels, components); T_R(Z)_l = Z_l D_l(R)^T by default.

    The normalisers (no gradient) stop the trivial solution of shrinking the embedding.
    Each degree is normalised by its own power (ours) so the invariant l = 0 block, which
    carries the energy, is not drowned by the l > 0 blocks: with one overall normaliser,
    300 steps of this objective alone took the force rotation error of a small TransIP on
    acac from 1.32 to 0.81; per degree, to 0.64.

    Args:
        embedding: (N, C, (lmax+1)^2) embedding of the original structures.
        embedding_rotated: the same for the rotated structures.
        rotations: (B, 3, 3) the rotations applied.
        batch: (N,) structure of each atom.
        lmax: degree of the embedding.
        transform: T(R) (default: the Wigner-D action).
    """
    target = (transform or RotationTransform(embedding.shape[1], lmax))(embedding, rotations, batch)
    loss = embedding.new_zeros(())
    for degree in range(lmax + 1):
        block = slice(degree * degree, (degree + 1) ** 2)
        scale = embedding[..., block].detach().square().mean().clamp(min=1e-12)
        loss = loss + (embedding_rotated[..., block] - target[..., block]).square().mean() / scale
    return loss


Objective = Callable[..., torch.Tensor]
# objective name -> (settings -> loss function of (Z, Z(R x), R, batch, lmax, T))
OBJECTIVES: dict[str, Callable[[dict[str, Any]], Objective]] = {
    "regression": lambda settings: equivariance_loss,
    "contrastive": lambda settings: partial(contrastive_equivariance_loss,
                                            temperature=settings["temperature"]),
}


class EquivarianceTerm(nn.Module):
    """The learned-equivariance objective as a training loss term: rotate the batch, run the
    model on the copy (energies only), compare the embeddings through T(R), weight by the
    schedule. Created by :meth:`create` when the backbone declares an equivariant embedding
    and the config gives it a weight; T(R) is trained with the model, never exported.

    Args:
        lmax: degree L of the embedding.
        channels: its channels C.
        settings: ``training.symmetry.equivariance`` (weight, max_angle, objective,
            transform, temperature, schedule, warmup, final).
    """

    name = "equivariance"

    def __init__(self, lmax: int, channels: int, settings: dict[str, Any]) -> None:
        super().__init__()
        self.lmax = int(lmax)
        self.settings = dict(settings)
        self.transform = RotationTransform(channels, lmax, settings["transform"])
        self.objective = OBJECTIVES[settings["objective"]](settings)

    @classmethod
    def create(cls, outputs: BackboneOutputs, settings: dict[str, Any]) -> EquivarianceTerm | None:
        """The term for a backbone declaring ``outputs``, or None when the weight is 0."""
        if settings["weight"] <= 0:
            return None
        if outputs.embedding_lmax is None or outputs.embedding_channels is None:
            raise ValueError("training.symmetry.equivariance.weight > 0 needs a backbone that "
                             "declares an equivariant embedding (outputs.embedding_lmax and "
                             "embedding_channels, e.g. TransIPBackbone); set it to 0")
        return cls(outputs.embedding_lmax, outputs.embedding_channels, settings)

    def forward(self, model: nn.Module, data: dict[str, torch.Tensor], pred: dict[str, torch.Tensor],
                rotations: torch.Tensor, fraction: float) -> tuple[torch.Tensor, float]:
        """``(loss, weight)`` for a batch and the model's prediction on it.

        Args:
            model: the Potential.
            data: the (possibly augmented) batch the prediction was made on.
            pred: the model's output on ``data`` (with EQUIVARIANT_EMBEDDING).
            rotations: (B, 3, 3) rotations, one per structure (of at most ``max_angle``).
            fraction: the used fraction of the training budget (for the schedule).
        """
        rotated = model(rotate_batch(data, rotations), compute_forces=False)
        loss = self.objective(pred[keys.EQUIVARIANT_EMBEDDING], rotated[keys.EQUIVARIANT_EMBEDDING],
                              rotations, data[keys.BATCH], self.lmax, self.transform)
        s = self.settings
        return loss, equivariance_weight(s["weight"], s["schedule"], fraction, s["warmup"], s["final"])
