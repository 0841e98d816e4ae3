"""TransIP: the backbone suite (:mod:`mlip.testing.backbone_suite`; exact translation,
permutation, forces = -dE/dr, stress, locality, periodic images, batching; rotation error
measured, not assumed), and the learned-equivariance objective reducing the error."""

from __future__ import annotations

import dataclasses

import ase.io
import pytest
import torch

from mlip.data import keys
from mlip.graph.build import atoms_to_batch
from mlip.model.build import build_potential
from mlip.ops.rotations import random_rotations
from mlip.testing import physics
from mlip.testing.backbone_suite import BackboneTests, Tolerances
from mlip.training.symmetry import equivariance_loss, rotate_batch

BACKBONE = {
    "class_path": "mlip.backbones.transip.TransIPBackbone",
    "init_args": {"width": 32, "depth": 2, "heads": 2, "edge_width": 32,
                  "embedding_channels": 8, "embedding_lmax": 2},
}
E0S = [-13.568422344967, -1026.8538996116, -2037.796869316]


def make_model(seed=0):
    torch.manual_seed(seed)
    return build_potential({"backbone": BACKBONE}, [1, 6, 8], E0S, 1.0, 0.0, 5.0, 12.0)


@pytest.fixture(scope="module")
def frames(bundled_acac):
    return ase.io.read(bundled_acac / "train_300K.xyz", ":20")


class TestTransIP(BackboneTests):
    backbone = {
        "class_path": "mlip.backbones.transip.TransIPBackbone",
        "init_args": {"width": 16, "depth": 2, "heads": 2, "edge_width": 16, "num_radial": 6,
                      "embedding_channels": 4, "embedding_lmax": 2, "readout_hidden": 16},
    }
    # No built-in rotation symmetry: an untrained TransIP is far from equivariant (see
    # test_rotation_is_not_built_in for the lower bound, and the training tests below).
    # Measured 2026-12-07 on the suite's random models, seeds 0-3 (model and rotations),
    # ethanol and the triclinic Cu cell, proper and improper, float64 and float32 alike:
    # energy up to 1.6e-2 eV/atom, forces up to 1.9 and stress up to 2.2 (relative). The
    # bounds (~5x) catch a blow-up, not a lack of symmetry. Every other check is exact.
    tolerances = dataclasses.replace(
        Tolerances(),
        rotation_energy={torch.float64: 0.1, torch.float32: 0.1},
        rotation_forces={torch.float64: 10.0, torch.float32: 10.0},
    )
    compile_init_args = {"width": 8, "depth": 1, "edge_width": 8, "num_radial": 4,
                         "embedding_lmax": 1, "readout_hidden": 8}


def test_rotation_is_not_built_in(frames):
    """Rotation invariance is NOT assumed: the kit measures it, and an untrained
    Transformer is far from equivariant."""
    err = physics.measure_rotation_error(make_model().double(), frames[3], num=3)
    assert err["forces"] > 0.03, err


def test_equivariance_loss_is_zero_for_an_equivariant_embedding():
    """The objective's target is the Wigner-D action: edge SH are exactly equivariant."""
    from mlip.ops.sh import spherical_harmonics

    g = torch.Generator().manual_seed(0)
    vec = torch.randn(6, 4, 3, generator=g, dtype=torch.float64)
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    rot = random_rotations(2, g)
    z = spherical_harmonics(vec.reshape(-1, 3), 2).view(6, 4, 9)
    rotated = torch.einsum("nij,ncj->nci", rot[batch], vec)
    z_rot = spherical_harmonics(rotated.reshape(-1, 3), 2).view(6, 4, 9)
    assert equivariance_loss(z, z_rot, rot, batch, 2) < 1e-24
    assert equivariance_loss(z, z, rot, batch, 2) > 0.1


def test_rotate_batch_is_a_rotation(frames):
    data = atoms_to_batch(frames[:3], 5.0, dtype=torch.float64)
    rot = random_rotations(3, torch.Generator().manual_seed(1))
    out = rotate_batch(data, rot)
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(3, 3, 3))
    assert torch.allclose(torch.linalg.det(rot), torch.ones(3, dtype=torch.float64))
    # Distances are preserved, forces rotate with the positions.
    i = 4
    r = rot[data[keys.BATCH][i]]
    assert torch.allclose(out[keys.POSITIONS][i], r @ data[keys.POSITIONS][i])
    assert torch.allclose(out[keys.FORCES][i], r @ data[keys.FORCES][i])


def mean_force_rotation_error(model, frames):
    model = model.double()
    errors = [physics.measure_rotation_error(model, a, num=4)["forces"] for a in frames]
    model.float()
    return sum(errors) / len(errors)


def train_objective_only(bundled_acac, model, loss_fn, transform=None):
    """300 Adam steps (lr 2e-3, cosine decay, batches of 5 of 30 acac frames) of an
    equivariance objective alone (T(R) trained jointly when given); the mean force rotation
    error on 3 held-out frames before and after."""
    frames = ase.io.read(bundled_acac / "train_300K.xyz", ":33")
    held_out = frames[30:33]
    before = mean_force_rotation_error(model, held_out)
    batches = [atoms_to_batch(frames[k:k + 5], 5.0, dtype=torch.float32) for k in range(0, 30, 5)]
    params = list(model.parameters()) + (list(transform.parameters()) if transform else [])
    opt = torch.optim.Adam(params, lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 300)
    g = torch.Generator().manual_seed(0)
    for step in range(300):
        data = batches[step % len(batches)]
        rot = random_rotations(5, g, dtype=torch.float32)
        z = model(data, compute_forces=False)[keys.EQUIVARIANT_EMBEDDING]
        z_rot = model(rotate_batch(data, rot), compute_forces=False)[keys.EQUIVARIANT_EMBEDDING]
        opt.zero_grad()
        loss_fn(z, z_rot, rot, data[keys.BATCH], 2, transform).backward()
        opt.step()
        schedule.step()
    return before, mean_force_rotation_error(model, held_out)


def test_equivariance_objective_reduces_the_error(bundled_acac):
    """300 Adam steps (lr 2e-3 with cosine decay, batches of 5 of 30 acac frames) of the
    learned-equivariance objective alone: the force rotation error on 3 held-out frames must
    fall by at least 1.2x (without the objective it stays where it is, 1.0x). The margin
    comes from the spread over seeds, not from this seed: measured 2026-12-02 over seeds
    0-5, 1.33x-2.58x (seed 0: 2.17x with 1 thread, 2.07x with 2)."""
    before, after = train_objective_only(bundled_acac, make_model(0), equivariance_loss)
    assert before > 1.0, before  # an untrained Transformer is far from equivariant
    assert after < before / 1.2, (before, after)


def test_direct_force_head(frames):
    """direct_forces: forces come from the head on Z's l = 1 block, not -dE/dr (so not
    energy-conserving), still exactly translation and permutation invariant."""
    torch.manual_seed(0)
    backbone = {"class_path": BACKBONE["class_path"],
                "init_args": {**BACKBONE["init_args"], "direct_forces": True}}
    model = build_potential({"backbone": backbone}, [1, 6, 8], E0S, 1.0, 0.0, 5.0, 12.0).double()
    data = atoms_to_batch(frames[:2], 5.0, dtype=torch.float64)
    out = model(data)
    assert out[keys.FORCES].shape == (30, 3) and keys.DIRECT_FORCES not in out
    fd = physics.measure_force_fd_error(model, frames[1])
    assert fd > 1e-2, fd  # the head is not the energy gradient
    for err in (physics.measure_translation_error(model, frames[0]),
                physics.measure_permutation_error(model, frames[0])):
        assert err["energy"] < 1e-12 and err["forces"] < 1e-10, err


def test_small_rotations_respect_the_angle_bound():
    rot = random_rotations(200, torch.Generator().manual_seed(3), max_angle_deg=20.0)
    angle = torch.rad2deg(torch.arccos(((rot.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)))
    assert angle.max() <= 20.0 + 1e-9 and angle.max() > 15.0
    assert torch.allclose(torch.linalg.det(rot), torch.ones(200, dtype=torch.float64))


def test_rotation_transform_starts_as_wigner_and_learns():
    """wigner_mix starts as the pure Wigner-D action (zero-initialised last layer) and its
    mixing network receives gradients."""
    from mlip.training.symmetry import RotationTransform

    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, 9, generator=g)
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    rot = random_rotations(2, g)
    plain, mixed = RotationTransform(4, 2, "wigner"), RotationTransform(4, 2, "wigner_mix")
    assert torch.allclose(plain(z, rot, batch), mixed(z, rot, batch), atol=1e-6)
    mixed(z, rot, batch).square().sum().backward()
    assert mixed.net[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="equivariance.transform"):
        RotationTransform(4, 2, "learned")


def test_contrastive_loss_minimal_when_matched_and_order_free():
    """InfoNCE: matched embeddings (Z(Rx) = T_R Z(x)) score lower than perturbed or
    shuffled ones, and permuting the atoms of the batch changes nothing."""
    from mlip.training.symmetry import RotationTransform, contrastive_equivariance_loss

    g = torch.Generator().manual_seed(1)
    n, lmax = 30, 2
    z = torch.randn(n, 4, 9, generator=g, dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(3), 10)
    rot = random_rotations(3, g, dtype=torch.float64)
    matched = RotationTransform(4, lmax)(z, rot, batch)
    best = contrastive_equivariance_loss(z, matched, rot, batch, lmax)
    for scale in (0.3, 1.0):
        noisy = matched + scale * torch.randn(matched.shape, generator=g, dtype=torch.float64)
        assert contrastive_equivariance_loss(z, noisy, rot, batch, lmax) > best
    shuffled = matched[torch.randperm(n, generator=g)]
    assert contrastive_equivariance_loss(z, shuffled, rot, batch, lmax) > best + 1.0
    perm = torch.randperm(n, generator=g)
    permuted = contrastive_equivariance_loss(z[perm], matched[perm], rot, batch[perm], lmax)
    assert permuted == pytest.approx(best.item(), rel=1e-12)


def test_equivariance_weight_schedules():
    from mlip.training.symmetry import equivariance_weight

    assert equivariance_weight(2.0, "constant", 0.5) == 2.0
    assert equivariance_weight(2.0, "warmup", 0.05, warmup=0.1) == pytest.approx(1.0)
    assert equivariance_weight(2.0, "warmup", 0.9, warmup=0.1) == 2.0
    assert equivariance_weight(2.0, "warmup_decay", 0.1, warmup=0.1, final=0.25) == pytest.approx(2.0)
    assert equivariance_weight(2.0, "warmup_decay", 1.0, warmup=0.1, final=0.25) == pytest.approx(0.5)
    assert equivariance_weight(2.0, "warmup_decay", 0.55, warmup=0.1, final=0.25) == pytest.approx(1.25)
    with pytest.raises(ValueError, match="equivariance.schedule"):
        equivariance_weight(1.0, "cyclic", 0.5)


def test_contrastive_objective_with_learned_transform_reduces_the_error(bundled_acac):
    """The protocol of test_equivariance_objective_reduces_the_error with the contrastive
    (InfoNCE) loss and the learned T(R) (wigner_mix, trained jointly), over three seeds
    (model and T(R) seeded alike): the median force rotation error on 3 held-out frames
    must fall by at least 1.5x; an objective that does nothing gives 1.0x on all three.
    Measured 2026-12-07, seeds 0-5: 1.03x, 3.83x, 2.90x, 2.40x, 2.86x, 3.29x (one seed in
    six barely moves in 300 steps, so no single seed is asserted)."""
    from mlip.training.symmetry import RotationTransform, contrastive_equivariance_loss

    ratios = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        transform = RotationTransform(8, 2, "wigner_mix")
        before, after = train_objective_only(bundled_acac, make_model(seed),
                                             contrastive_equivariance_loss, transform)
        assert before > 0.5, before  # an untrained Transformer is far from equivariant
        ratios.append(before / after)
    assert sorted(ratios)[1] > 1.5, ratios
