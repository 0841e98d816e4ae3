"""Give a model trained without the data-referenced ZBL core the default one.

The core (mlip/model/repulsion.py) never touches a training edge, so a model trained with
no core or with the covalent-radius core has the weights the default would have trained;
this re-saves it with ``repulsion: {inner: 0.5, outer: 0.85, reference: data}``, the
reference distances measured on the training split of the given file (same split rule as
training: ``--val-size`` structures by seed 0).

    python tools/recore_model.py old.pt data/acac/train_300K.xyz new.pt --val-size 50
"""

from __future__ import annotations

import argparse

import torch

from mlip.data.lmdb import split_indices
from mlip.data.readers import iter_structures
from mlip.graph.stats import shortest_pair_distances
from mlip.model.io import load_model, save_model
from mlip.model.repulsion import ZBLRepulsion
from mlip.training.config import DEFAULTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("train", help="the training file the model was trained on")
    parser.add_argument("out")
    parser.add_argument("--val-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    structures = list(iter_structures(args.train))
    train_idx, _ = split_indices(len(structures), val_size=args.val_size, seed=args.seed)
    model = load_model(args.model)
    found = shortest_pair_distances([structures[k] for k in train_idx], model.cutoff)
    payload = torch.load(args.model, weights_only=True)
    core = dict(DEFAULTS["model"]["repulsion"])
    model.repulsion = ZBLRepulsion(model.atomic_numbers, **core)
    model.repulsion.set_reference(found, model.cutoff)
    model.repulsion.to(next(model.parameters()).dtype)
    save_model(args.out, model, {**payload["model_config"], "repulsion": core}, payload["avg_num_neighbors"])
    print(f"closest pairs {dict(sorted((f'{a}-{b}', round(d, 3)) for (a, b), d in found.items()))}"
          f" -> {args.out}")


if __name__ == "__main__":
    main()
