"""`mlip eval` and `mlip data` never import Lightning (only training needs it), and neither
does importing the training package or its evaluation, metrics and plotting modules."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch

from mlip.model.build import build_potential
from mlip.model.io import save_model

COMMANDS = textwrap.dedent(
    """
    import json, sys
    from mlip.cli.main import main

    model, xyz, out = sys.argv[1:4]
    codes = [
        main(["data", "convert", xyz, "-o", out + "/few.lmdb", "--no-progress"]),
        main(["data", "info", out + "/few.lmdb"]),
        main(["eval", model, xyz, "--json", out + "/eval.json"]),
        main(["eval", model, out + "/few.lmdb"]),
    ]
    import mlip.training, mlip.training.evaluate, mlip.training.metrics, mlip.training.plots
    print(json.dumps({"codes": codes, "lightning": sorted(
        name for name in sys.modules if name == "lightning" or name.startswith("lightning."))}))
    """
)


def test_eval_and_data_run_without_lightning(bundled_acac, tmp_path) -> None:
    torch.manual_seed(0)
    config = {"backbone": {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
                           "init_args": {"channels": 4, "lmax_sh": 1, "correlation": 1}}}
    model = build_potential(config, [1, 6, 8], [-13.6, -1026.9, -2037.8], 1.0, -1.0, 5.0, 12.0)
    path = save_model(tmp_path / "m.pt", model, config, 12.0)
    data = tmp_path / "few.xyz"
    lines = (bundled_acac / "test_MD_300K.xyz").read_text().splitlines(True)
    data.write_text("".join(lines[: 17 * 3]))  # three frames of 15 atoms
    proc = subprocess.run(
        [sys.executable, "-c", COMMANDS, str(path), str(data), str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 0, 0, 0], "lightning": []}, result
    assert json.loads((tmp_path / "eval.json").read_text())["results"][0]["structures"] == 3
