"""The potential: E0 + scaled backbone per-atom energies (+ ZBL), with forces and stress.

E_i = E0[z_i] + scale * (b_i - b_iso[z_i]) (+ ZBL_i),     E = sum_i E_i     (``baseline="none"``,
the default), where b_i is the backbone's per-atom output and b_iso[z] its output for a
lone atom of element z. Nothing in the expression depends on how many neighbours an atom
has: an isolated atom has exactly E0, two atoms or fragments farther apart than the cutoff
have exactly the sum of their energies, and all the interaction energy (about -4.7 eV per
atom in an organic molecule) is learned by the backbone, which can only learn it from
geometries: where atoms meet from vacuum, frames that show it (``data.extra``, made by
``mlip data dissociation``) teach it (docs/history.md, "Bonds that break").

The other baselines add a per-element shift (the training split's mean interaction energy
per atom, plus an optional learned correction c in units of ``scale``):

* ``"constant"``: E_i += shift + scale * c, always on, so an isolated atom has E0 + shift:
  the asymptote of every dissociation is off by the shifts (measured as the worse choice;
  for users whose E0s are not isolated-atom energies).
* ``"per_element"``: E_i += (shift + scale * c) * g(n_i), n_i = sum_j u(r_ij) the smooth
  coordination number (u the cutoff envelope), g(n) = smootherstep(min(n, 1)): on as soon as
  an atom has one neighbour, off when its last leaves, a built-in 8-9 eV binding of any two
  atoms that meet from vacuum. The default of model files written before ``"none"``; kept
  for them.
* ``"coordination"``: shift * n_i / n_avg, a built-in attraction of about shift / n_avg
  per neighbour; kept for model files of format version <= 2.

``learn_shift=True`` adds the trainable correction c (initialised at 0; ``"none"`` has no
shift to correct).

Energies are accumulated in float64 whatever the model dtype: total energies of molecules
are thousands of eV, where float32 resolves only ~1 meV. The E0s are an exact float64
buffer (:mod:`mlip.ops.buffers`) that ``.to(dtype)`` never rounds; forces keep the model
dtype. F = -dE/dpos, stress = (1/V) dE/d(strain) with a symmetric strain applied to
positions and cell (ASE sign: positive = tension), all by autograd in one place
(:meth:`Potential.forward`). A backbone that declares ``outputs.direct_forces`` gives the
forces instead (not energy-conserving).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mlip.backbones.base import ActiveSets, Backbone
from mlip.data import keys
from mlip.data.structure import MAX_Z
from mlip.graph.build import as_batch_dict
from mlip.graph.edges import edge_vectors
from mlip.model.repulsion import ZBLRepulsion
from mlip.model.uncertainty import LastLayerUncertainty
from mlip.ops.buffers import exact, register_exact
from mlip.ops.radial import PolynomialCutoff
from mlip.ops.radial_table import RadialTable
from mlip.ops.scatter import scatter_sum
from mlip.ops.tp.base import TensorProduct

BASELINES = ("none", "constant", "per_element", "coordination")


class UnknownElementError(ValueError):
    """The structure contains elements the model was not trained on."""


class Potential(nn.Module):
    """Energy model with the shared physics around any backbone.

    Args:
        backbone: a :class:`~mlip.backbones.base.Backbone`.
        atomic_numbers: the elements the model knows, in species-index order.
        e0s: reference energy of each element [eV], same order.
        scale: per-atom energy scale [eV].
        shift: per-atom energy shift [eV]: one number, or one per element (same order).
        baseline: how the shift enters: ``"none"`` (default: no shift), ``"constant"``
            (always on), ``"per_element"`` (on from an atom's first neighbour; older files) or
            ``"coordination"`` (shift * n_i / n_avg; format version <= 2); see above.
        learn_shift: add a trainable per-element correction to the shift (see above).
        cutoff: graph cutoff [Å] the model was trained with.
        avg_num_neighbors: average neighbour count of the training data.
        repulsion: keyword arguments of a :class:`~mlip.model.repulsion.ZBLRepulsion` added
            to the per-atom energies (``{}`` for its defaults), or None for none.
        heads: names of the readout heads of a multi-head model (one per level of theory,
            on one backbone built with ``num_heads``), or None for one head. Each head has
            its own E0s (``e0s`` then one row per head) and lone-atom reference; a batch
            picks each structure's head with HEAD (B,) (absent: the first). Every adapter
            takes single-head files: :func:`mlip.model.heads.select_head` makes one.
        uncertainty: the settings of a fitted last-layer uncertainty
            (:class:`~mlip.model.uncertainty.LastLayerUncertainty`; its constants come with
            the state dict), or None. With one, an eval-mode forward also returns
            ENERGY_UNCERTAINTY (B,) [eV] and FORCES_UNCERTAINTY (N,) [eV/Å].
    """

    def __init__(
        self,
        backbone: Backbone,
        atomic_numbers: list[int],
        e0s: list[float],
        scale: float = 1.0,
        shift: float | list[float] = 0.0,
        cutoff: float = 5.0,
        avg_num_neighbors: float = 1.0,
        repulsion: dict | None = None,
        baseline: str = "none",
        learn_shift: bool = False,
        heads: list[str] | None = None,
        uncertainty: dict | None = None,
    ) -> None:
        super().__init__()
        self.heads = list(heads) if heads else None
        e0_table = torch.tensor(e0s, dtype=torch.float64)
        if e0_table.shape[-1] != len(atomic_numbers):
            raise ValueError("atomic_numbers and e0s must have the same length")
        if self.heads is not None:
            if len(set(self.heads)) != len(self.heads) or e0_table.shape != (len(self.heads), len(atomic_numbers)):
                raise ValueError(f"heads {self.heads}: distinct names and one row of E0s per head")
            if backbone.outputs.num_heads != len(self.heads):
                raise ValueError(f"the backbone has {backbone.outputs.num_heads} readout "
                                 f"head(s), not {len(self.heads)}")
        elif e0_table.dim() != 1:
            raise ValueError("one row of E0s for a single-head model")
        if not isinstance(backbone, Backbone):
            raise TypeError(f"{type(backbone).__name__} is not an mlip.backbones.base.Backbone")
        self.backbone = backbone
        self.cutoff = float(cutoff)
        self.atomic_numbers = [int(z) for z in atomic_numbers]
        z_to_species = torch.full((MAX_Z + 1,), -1, dtype=torch.long)
        z_to_species[torch.tensor(self.atomic_numbers, dtype=torch.long)] = torch.arange(
            len(self.atomic_numbers)
        )
        self.register_buffer("z_to_species", z_to_species)
        register_exact(self, "e0s", e0_table, persistent=True)
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        self.baseline = baseline
        shifts = torch.as_tensor(shift, dtype=torch.float64).reshape(-1)
        if shifts.numel() == 1:
            shifts = shifts.expand(len(self.atomic_numbers)).clone()
        if shifts.numel() != len(self.atomic_numbers):
            raise ValueError("shift must be one number or one per element")
        if baseline == "none":
            shifts = torch.zeros_like(shifts)
        self.register_buffer("scale", torch.tensor(float(scale)))
        register_exact(self, "shift", shifts, persistent=True)
        self.learn_shift = bool(learn_shift)
        if self.learn_shift:
            if baseline == "none":
                raise ValueError("learn_shift needs a baseline with a shift (constant, per_element "
                                 "or coordination)")
            # in units of scale, so one optimiser step moves it as much as the readout's
            self.shift_correction = nn.Parameter(torch.zeros(len(self.atomic_numbers)))
        self.register_buffer("inv_avg_neighbors", torch.tensor(1.0 / float(avg_num_neighbors)))
        self.envelope = PolynomialCutoff(cutoff)
        self.repulsion = None if repulsion is None else ZBLRepulsion(self.atomic_numbers, **repulsion)
        self._reference: tuple[tuple, torch.Tensor] | None = None
        self._frozen_reference: torch.Tensor | None = None
        self.uncertainty: LastLayerUncertainty | None = None
        if uncertainty is not None:
            if uncertainty.get("method") != "llpr":
                raise ValueError(f"unknown uncertainty method {uncertainty.get('method')!r} (llpr)")
            self.uncertainty = LastLayerUncertainty(int(uncertainty["features"]), len(self.atomic_numbers))

    @property
    def e0s(self) -> torch.Tensor:
        """(S,) float64 isolated-atom energies [eV], in species order ((H, S) with heads)."""
        return exact(self, "e0s")

    def head_index(self, name: str) -> int:
        """The index of head ``name``; a ValueError listing the heads if there is none."""
        heads = self.heads or []
        if name not in heads:
            raise ValueError(f"no head {name!r}: this model has "
                             + (f"the heads {heads}" if heads else "a single head"))
        return heads.index(name)

    @property
    def shift(self) -> torch.Tensor:
        """(S,) float64 per-atom energy shifts from the statistics [eV], in species order
        (without the learned correction; see :meth:`effective_shift`)."""
        return exact(self, "shift")

    def effective_shift(self) -> torch.Tensor:
        """(S,) float64 shift the energy uses: statistics plus the learned correction."""
        return self._shift_with_correction().detach()

    def _shift_with_correction(self) -> torch.Tensor:
        if not self.learn_shift:
            return self.shift
        return self.shift + self.scale.double() * self.shift_correction.double()

    def baseline_energies(self, coordination: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """(N,) float64 shift term of each atom (from its smooth coordination number for
        the per_element and coordination baselines)."""
        shift = self._shift_with_correction()[species]
        if self.baseline == "constant":
            return shift
        if self.baseline == "coordination":
            return shift * (coordination.double() * self.inv_avg_neighbors.double())
        x = coordination.double().clamp(0.0, 1.0)
        return shift * (x * x * x * (10.0 + x * (6.0 * x - 15.0)))

    def prepare(self) -> None:
        """The explicit step that fills fitted constants (the tensor products'
        :meth:`~mlip.ops.tp.base.TensorProduct.prepare`); new models only, a loaded
        state dict carries them."""
        for module in self.modules():
            if isinstance(module, TensorProduct):
                module.prepare()

    # -- elements ---------------------------------------------------------------------------
    def species_of(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """(N,) Z -> (N,) species index, -1 for elements the model does not know."""
        return self.z_to_species[atomic_numbers]

    def check_elements(self, numbers, where: str = "") -> None:
        """Raise :class:`UnknownElementError` naming the elements the model does not know.

        Args:
            numbers: atomic numbers (any int sequence or array).
            where: what the atoms are (e.g. ``"data.xyz, frame 3"``), for the message.
        """
        from ase.data import chemical_symbols

        known = set(self.atomic_numbers)
        numbers = [int(z) for z in numbers]
        bad = [i for i, z in enumerate(numbers) if z not in known]
        if bad:
            names = sorted({chemical_symbols[numbers[i]] if 0 < numbers[i] <= MAX_Z else
                            str(numbers[i]) for i in bad})
            trained = [chemical_symbols[z] for z in self.atomic_numbers]
            prefix = f"{where}: " if where else ""
            raise UnknownElementError(
                f"{prefix}element(s) {names} at atom indices {bad[:10]}"
                f"{' ...' if len(bad) > 10 else ''} are not in the model (trained on {trained})"
            )

    # -- lone-atom reference ------------------------------------------------------------------
    def reference_energies(self) -> torch.Tensor:
        """(S,) backbone output b_iso for a lone atom of each element (no edges); (S, H)
        with several heads.

        It depends only on the weights: in training mode it is recomputed with the graph
        (the weights change every step and the loss needs its gradient); otherwise it is
        computed once per weight state (keyed by the parameters' storage and version
        counters, which every optimiser step, ``load_state_dict`` and ``.to()`` change) and
        reused by every call.
        """
        if self._frozen_reference is not None:
            return self._frozen_reference
        params = list(self.backbone.parameters())
        if self.training and torch.is_grad_enabled():
            return self._lone_atom_pass()
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        if self._reference is None or self._reference[0] != key:
            with torch.no_grad():
                self._reference = (key, self._lone_atom_pass().detach())
        return self._reference[1]

    def freeze_reference(self) -> None:
        """Fix the lone-atom reference at its value for the current weights (for a frozen
        inference copy that is traced or compiled: the reference is then a constant)."""
        self._frozen_reference = None
        training = self.training
        self.eval()
        self._frozen_reference = self.reference_energies().detach().clone()
        self.train(training)

    def tabulate_radial(self, tolerance: float, spacings: tuple[float, ...] = (0.02, 0.01, 0.005)
                        ) -> RadialTable | None:
        """For inference copies: let the backbone read its radial networks from a table
        (:meth:`Backbone.tabulate_radial`, with the ZBL core's edge weights and switch radii
        built in), at the coarsest of ``spacings`` [Å] whose measured interpolation error,
        relative to the largest radial output, is within ``tolerance``.

        Returns:
            the table now in use, or None (nothing changed) when the backbone has no
            tabulated form or no spacing meets the tolerance.
        """
        # The table is built in float64 on the CPU (RadialTable.build moves it to the model's
        # device); the repulsion's switch goes in as a CPU float64 copy.
        rep = None if self.repulsion is None else copy.deepcopy(self.repulsion).double().cpu()
        edge_weight = switch = None
        if rep is not None:
            def edge_weight(r: torch.Tensor, a: int, b: int) -> torch.Tensor:
                species = torch.tensor([a, b], device=r.device)
                edge_index = torch.tensor([[0], [1]], device=r.device).expand(2, r.shape[0])
                return rep.learned_weights(r, species, edge_index)

            def switch(a: int, b: int) -> tuple[float, float]:
                return rep.pair_radii(a, b)

        for spacing in spacings:
            table = self.backbone.tabulate_radial(spacing, edge_weight, switch)
            if table is None:
                return None
            if table.max_error <= tolerance:
                self.backbone.radial_table = table
                return table
        return None

    def lone_atoms(self) -> dict[str, torch.Tensor]:
        """The backbone's input for one lone atom (no edges) of each element, in species
        order, on the backbone's device and dtype."""
        like = next(self.backbone.parameters())
        num = len(self.atomic_numbers)
        return {
            keys.SPECIES: torch.arange(num, device=like.device),
            keys.EDGE_INDEX: torch.zeros(2, 0, dtype=torch.long, device=like.device),
            keys.EDGE_VECTORS: like.new_zeros(0, 3),
            keys.BATCH: torch.arange(num, device=like.device),
        }

    def _lone_atom_pass(self) -> torch.Tensor:
        return self.backbone(self.lone_atoms())[keys.NODE_ENERGIES]

    # -- energy, forces, stress -------------------------------------------------------------------
    def atomic_energies(self, data: dict[str, torch.Tensor], species: torch.Tensor,
                        vectors: torch.Tensor, active: ActiveSets | None = None,
                        ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per-atom energies from edge vectors: the part of the energy expression that
        every driver shares (:meth:`forward` from positions and cell shifts; the LAMMPS
        and ML-IAP paths from the vectors their neighbour lists give).

        Args:
            data: batch dict with EDGE_INDEX (2, E) in mirrored order and BATCH (N,).
            species: (N,) species indices.
            vectors: (E, 3) edge vectors, sender minus receiver [Å].
            active: per-layer active sets for the backbone (:mod:`mlip.backbones.base`;
                the LAMMPS plugin's ghost atoms); only the nodes the last layer computes
                then have meaningful energies.

        Returns:
            the backbone's outputs, and (N,) float64 per-atom energies [eV].
        """
        edge_index = data[keys.EDGE_INDEX]
        inputs = dict(data)
        inputs.update({keys.SPECIES: species, keys.EDGE_VECTORS: vectors})
        lengths = vectors.norm(dim=-1)
        if self.repulsion is not None:
            inputs[keys.EDGE_WEIGHTS] = self.repulsion.learned_weights(lengths, species, edge_index)
        out = self.backbone(inputs) if active is None else self.backbone(inputs, active)
        num_atoms = species.shape[0]
        node, reference = out[keys.NODE_ENERGIES], self.reference_energies()[species]
        if self.heads is not None:  # each atom's column: its structure's head
            head = data[keys.HEAD][data[keys.BATCH]] if keys.HEAD in data else torch.zeros_like(species)
            node = node.gather(1, head.unsqueeze(1)).squeeze(1)
            reference = reference.gather(1, head.unsqueeze(1)).squeeze(1)
            e0 = self.e0s[head, species]
        else:
            e0 = self.e0s[species]
        atomic = self.scale * (node - reference)
        if self.repulsion is not None:
            atomic = atomic + self.repulsion(lengths, species, edge_index, num_atoms)
        atomic = atomic.double() + e0
        if self.baseline in ("per_element", "coordination"):
            coordination = scatter_sum(self.envelope(lengths), edge_index[1], num_atoms)
            atomic = atomic + self.baseline_energies(coordination, species)
        elif self.baseline == "constant":
            atomic = atomic + self.baseline_energies(lengths.new_zeros(num_atoms), species)
        return out, atomic

    def forward(
        self,
        data: dict[str, torch.Tensor],
        compute_forces: bool = True,
        compute_stress: bool = False,
        training: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energies, and forces/stress by autograd (or the backbone's direct force head).

        Args:
            data: batch dict with POSITIONS, ATOMIC_NUMBERS, EDGE_INDEX, CELL_SHIFTS, CELL,
                PBC, BATCH (see :mod:`mlip.data.keys`; built by :func:`mlip.graph.build.collate`),
                or a PyTorch Geometric ``Batch`` of the same keys (read by
                :func:`mlip.graph.build.as_batch_dict`).
            compute_forces: return FORCES (N, 3) [eV/Å].
            compute_stress: return STRESS and VIRIAL (B, 3, 3); zero for non-periodic
                structures.
            training: keep the graph of the derivatives so a loss on forces can be
                back-propagated.

        Returns:
            dict with ENERGY (B,) and ATOMIC_ENERGIES (N,) in float64, the backbone's
            declared extra outputs, and FORCES / STRESS / VIRIAL when asked.
        """
        if not isinstance(data, dict):
            data = as_batch_dict(data)
        pos = data[keys.POSITIONS]
        cell = data[keys.CELL]
        batch = data[keys.BATCH]
        num_graphs = cell.shape[0]
        direct = self.backbone.outputs.direct_forces
        if compute_forces and not direct and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        strain = None
        if compute_stress:
            strain = torch.zeros_like(cell, requires_grad=True)
            sym = 0.5 * (strain + strain.transpose(-1, -2))
            pos = pos + torch.einsum("ni,nij->nj", pos, sym[batch])
            cell = cell + torch.bmm(cell, sym)
        species = self.species_of(data[keys.ATOMIC_NUMBERS])
        vectors = edge_vectors(pos, data[keys.EDGE_INDEX], data[keys.CELL_SHIFTS], cell, batch)
        out, atomic = self.atomic_energies(data, species, vectors)
        energy = scatter_sum(atomic, batch, num_graphs)  # float64
        result = {k: v for k, v in out.items() if k not in (keys.NODE_ENERGIES, keys.DIRECT_FORCES)}
        result.update({keys.ENERGY: energy, keys.ATOMIC_ENERGIES: atomic})
        if self.uncertainty is not None and not self.training and keys.READOUT_FEATURES in out:
            result[keys.ENERGY_UNCERTAINTY], result[keys.FORCES_UNCERTAINTY] = self.uncertainty(
                out[keys.READOUT_FEATURES].detach(), species, batch, num_graphs, self.scale)
        if compute_forces and direct:
            result[keys.FORCES] = self.scale * out[keys.DIRECT_FORCES]
        wrt = ([pos] if compute_forces and not direct else []) + ([strain] if compute_stress else [])
        if wrt:
            grads = torch.autograd.grad(
                energy.sum(), wrt, create_graph=training, retain_graph=training, allow_unused=True
            )
            grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt, strict=True)]
            if compute_forces and not direct:
                result[keys.FORCES] = -grads[0]
            if compute_stress:
                de_dstrain = grads[-1]
                volume = torch.linalg.det(data[keys.CELL]).abs()
                periodic = data[keys.PBC].any(dim=-1)
                safe = torch.where(periodic, volume, torch.ones_like(volume))
                result[keys.VIRIAL] = -de_dstrain
                result[keys.STRESS] = torch.where(
                    periodic[:, None, None], de_dstrain / safe[:, None, None], torch.zeros_like(de_dstrain)
                )
        return result
