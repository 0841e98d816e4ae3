"""Sharded datasets: `mlip data convert --shard-size`, the manifest, reading and statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlip.cli.main import main
from mlip.data.convert import convert
from mlip.data.lmdb import LmdbDataset, LmdbFormatError
from mlip.data.shards import MANIFEST, ShardedDataset, open_dataset, shard_name
from mlip.data.stats import DatasetStatistics, StatisticsAccumulator, statistics_key
from mlip.graph.stats import closest_pairs, count_edges


@pytest.fixture(scope="module")
def inputs(tiny: Path) -> list[Path]:
    return [tiny / "acac_20.xyz", tiny / "cu_emt_10.xyz"]


def _convert(inputs, out, **kw):
    return convert(inputs, out, progress=False, cutoff=4.0, neighbor_counter=count_edges,
                   pair_distances=closest_pairs, **kw)


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_hold_the_same_records_as_one_file(tmp_path: Path, inputs, workers: int) -> None:
    _convert(inputs, tmp_path / "one.lmdb")
    report = _convert(inputs, tmp_path / "sh", shard_size=7, workers=workers)
    # shards do not span input files: 20 -> 7 + 7 + 6, 10 -> 7 + 3
    assert report.shards == 5 and report.written == 30
    one, sharded = LmdbDataset(tmp_path / "one.lmdb"), open_dataset(tmp_path / "sh")
    assert isinstance(sharded, ShardedDataset) and len(sharded) == 30
    assert [s["count"] for s in sharded.manifest["shards"]] == [7, 7, 6, 7, 3]
    assert sorted(p.name for p in (tmp_path / "sh").iterdir()) == \
        [MANIFEST] + [shard_name(i) for i in range(5)]
    assert [r for shard in sharded.shards for r in shard.iter_raw()] == list(one.iter_raw())
    np.testing.assert_array_equal(sharded.sizes(), one.sizes())
    assert sharded[25].source == one[25].source and sharded[-1].frame == one[-1].frame
    for key in ("count", "elements", "atoms_per_element", "labels", "atoms_per_structure"):
        assert sharded.header[key] == pytest.approx(one.header[key], rel=1e-12), key
    for label, moments in one.header["label_statistics"].items():  # merged per shard
        assert sharded.header["label_statistics"][label] == pytest.approx(moments, rel=1e-9), label
    name = statistics_key("all", 4.0)
    a, b = one.metadata(name), sharded.metadata(name)
    assert a["num_structures"] == b["num_structures"] == 30
    assert b["closest_pairs"] == a["closest_pairs"] and b["avg_num_neighbors"] == a["avg_num_neighbors"]
    np.testing.assert_allclose(list(b["e0s"].values()), list(a["e0s"].values()), rtol=1e-9)
    # the per-shard sums merge into the same statistics
    merged = StatisticsAccumulator.from_state(sharded.statistics_states()[0])
    for state in sharded.statistics_states()[1:]:
        merged.merge(StatisticsAccumulator.from_state(state))
    stats = merged.finalize()
    assert stats.num_structures == 30 and stats.closest_pairs == a["closest_pairs"]
    assert stats.energy_per_atom_rms == pytest.approx(a["energy_per_atom_rms"], rel=1e-7)
    assert DatasetStatistics.from_dict(b).force_rms == pytest.approx(a["force_rms"], rel=1e-12)
    with pytest.raises(IndexError, match="out of range"):
        sharded[30]


def test_cli_convert_and_info_on_a_shard_folder(tmp_path: Path, inputs, capsys) -> None:
    out = tmp_path / "sh"
    args = ["data", "convert", *map(str, inputs), "-o", str(out), "--shard-size", "8",
            "--workers", "2", "--no-progress"]
    assert main(args) == 0
    assert "(5 shards)" in capsys.readouterr().out  # 8 + 8 + 4, 8 + 2
    assert main(args) == 1
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--shard-size", "100"]) == 0
    capsys.readouterr()
    assert len(ShardedDataset(out).manifest["shards"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sh"]  # no partial folders left
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "30 structures" in text and "shards:  2" in text
    assert main(["data", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [s["count"] for s in info["shards"]] == [20, 10]


def test_bad_frame_in_a_worker_is_one_line_and_leaves_nothing(tmp_path: Path, tiny: Path, capsys) -> None:
    out = tmp_path / "sh"
    args = ["data", "convert", str(tiny / "acac_20.xyz"), str(tiny / "nan_forces.xyz"),
            "-o", str(out), "--shard-size", "5", "--workers", "2"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nan_forces.xyz, frame 1: " in err
    assert list(tmp_path.iterdir()) == []


def test_inconsistent_folder_is_refused(tmp_path: Path, inputs) -> None:
    _convert(inputs, tmp_path / "sh", shard_size=10)
    manifest = tmp_path / "sh" / MANIFEST
    (tmp_path / "sh" / shard_name(1)).unlink()
    with pytest.raises(FileNotFoundError, match=shard_name(1)):
        ShardedDataset(tmp_path / "sh")[15]
    manifest.write_text(manifest.read_text().replace('"count": 30', '"count": 31'))
    with pytest.raises(LmdbFormatError, match="damaged|checksum|crc"):
        ShardedDataset(tmp_path / "sh")
    with pytest.raises(FileNotFoundError, match="without manifest.json"):
        open_dataset(tmp_path)


def test_training_reads_a_shard_folder_and_merges_its_statistics(tmp_path: Path, tiny: Path) -> None:
    from mlip.training.config import load_config
    from mlip.training.datamodule import PotentialDataModule

    _convert([tiny / "acac_20.xyz"], tmp_path / "train", shard_size=6)
    _convert([tiny / "acac_20.xyz"], tmp_path / "val", shard_size=6)
    cfg = load_config(None, [f"data.train=[{tmp_path / 'train'}]",
                             f"data.val=[{tmp_path / 'val'}]", "data.cutoff=4.0",
                             "data.e0s=least_squares"])
    dm = PotentialDataModule(cfg)
    dm.prepare()
    assert len(dm.train_set) == 20 and len(dm.val_set) == 20
    direct = StatisticsAccumulator(cutoff=4.0, neighbor_counter=count_edges,
                                   pair_distances=closest_pairs)
    for s in LmdbDataset(convert([tiny / "acac_20.xyz"], tmp_path / "x.lmdb", progress=False).output):
        direct.add(s)
    want = direct.finalize()
    assert dm.statistics.avg_num_neighbors == want.avg_num_neighbors
    assert dm.statistics.closest_pairs == want.closest_pairs
    assert dm.statistics.energy_per_atom_rms == pytest.approx(want.energy_per_atom_rms, rel=1e-7)
