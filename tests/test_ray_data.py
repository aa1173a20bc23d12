"""``data.format: ray_data``: Ray Data streams the Parquet shards into 2 Ray Train workers on this 2-core machine.

Shown here, with the real Ray Data + Ray Train (a local Ray on 127.0.0.1 with 2 CPUs for the 2 workers plus
``ray.data_cpus`` = 2 for Ray Data's tasks):

* one epoch covers every sample exactly once across the 2 workers, except the ``N mod 2`` row that
  ``streaming_split(equal=True)`` drops, and no row reaches both workers;
* the order changes between epochs, and the crops of a sample in epoch e are the ones the other loaders cut
  (the same SpatialAugment with the same generator seeded by (seed, e, sample), checked against an
  independent decode + crop here);
* a resumed run (the driver's start epoch = 2) cuts epoch 2's crops, i.e. uses that epoch's seeds;
* corrupt image bytes: ``on_bad_file=fail`` ends the run with a DataError naming the shard file and the
  sample; ``skip`` trains on with every batch delivered;
* the driver refuses a cluster whose CPUs the training workers take entirely (the old hang), in one line.

Fast checks without a Ray cluster: ``decode_views`` (the Ray Data task's function) cuts the other loaders'
crops and names the shard URI of corrupt bytes; the config and CLI refuse what cannot work.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from shard_helpers import corrupt_shard_row

from nrcc_scale.config import Config, ConfigError
from nrcc_scale.config_load import load_config
from nrcc_scale.data.augment import SpatialAugment
from nrcc_scale.data.base import ArraySource, DataError
from nrcc_scale.data.parquet_shards import decode_image, read_manifest, write_shards

N, SIDE, ROWS_PER_FILE, SEED = 301, 16, 40, 5


def _source() -> ArraySource:
    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 256, size=(N, SIDE // 8, SIDE // 8, 3), dtype=np.uint8)
    images = np.ascontiguousarray(np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2))
    return ArraySource("toy", images, rng.integers(0, 3, N), ["a", "b", "c"])


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from nrcc_scale.config import RayConfig
    from nrcc_scale.ray_setup import init_ray

    if ray.is_initialized():
        ray.shutdown()
    # the workers cannot import this test module (tests/ is not on their path): ship _loop by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    line = init_ray(RayConfig(num_cpus=2), data_cpus=2)
    assert "4 CPUs incl. 2 for Ray Data" in line
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray-data") / "shards"
    write_shards(_source(), str(folder), rows_per_file=ROWS_PER_FILE, progress=False, log=lambda m: None)
    return folder


def _cfg(root: Path, **data) -> Config:
    cfg = load_config([], [f"data.root={root}", "data.format=ray_data", f"train.seed={SEED}", "data.resolution=8",
                           "train.num_workers=2", "train.cpus_per_worker=1", "data.shuffle_buffer=64"])
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def _loop(config: dict) -> None:
    """A Ray Train worker: stream `epochs` epochs through RayDataTrainLoader and record what it got."""
    import ray.train

    from nrcc_scale.data.ray_data_loader import RayDataTrainLoader

    data_cfg = config["data_cfg"]
    rank = ray.train.get_context().get_world_rank()
    loader = RayDataTrainLoader(data_cfg, config["n"], 2, config["batch"], rank, 2, SEED)
    record = {}
    for epoch in config["epochs"]:
        loader.set_epoch(epoch)
        ids, crops, batches = [], {}, 0
        for views, labels, index in loader:
            assert views.dtype == torch.uint8 and views.shape[1:] == (2, 3, 8, 8)
            assert labels.shape == index.shape == (config["batch"],)
            batches += 1
            ids += index.tolist()
            for j, i in enumerate(index.tolist()):
                if i < 12:
                    crops[i] = views[j].tolist()
        record[epoch] = {"ids": ids, "crops": crops, "batches": batches, "len": len(loader)}
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(record))


def _fit(cfg: Config, out: Path, epochs: list[int], batch: int, start_epoch: int):
    import ray.train
    from ray.train.torch import TorchTrainer

    from nrcc_scale.data.ray_data_loader import build_train_dataset, check_data_cpus, train_data_config

    check_data_cpus(cfg)
    out.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _loop, train_loop_config={"data_cfg": cfg.data, "n": N, "batch": batch, "epochs": epochs, "out": str(out)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        datasets={"train": build_train_dataset(cfg, start_epoch=start_epoch)}, dataset_config=train_data_config(),
        run_config=ray.train.RunConfig(name="rd", storage_path=str(out / "runs"),
                                       failure_config=ray.train.FailureConfig(max_failures=0)))
    try:
        result = trainer.fit()
    except Exception as err:  # noqa: BLE001 - Ray Train V2 raises the workers' error from fit()
        return err, None
    if result.error is not None:
        return result.error, None
    return None, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _expected_crops(shards: Path, sample: int, epoch: int) -> list:
    """Independently: decode the sample's JPEG from its shard and cut 2 crops with (SEED, epoch, sample)."""
    m = read_manifest(str(shards))
    k = sample // ROWS_PER_FILE
    table = pq.read_table(shards / m.files[k])
    image = decode_image(table.column("image")[sample - k * ROWS_PER_FILE].as_py())
    rng = np.random.default_rng([SEED, epoch, sample])
    cfg = _cfg(shards)
    spatial = SpatialAugment(8, (cfg.data.augment.crop_scale_min, cfg.data.augment.crop_scale_max),
                             cfg.data.augment.flip_p)
    return torch.stack([spatial(image, rng) for _ in range(2)]).tolist()


@pytest.mark.slow
def test_ray_data_exactly_once_per_epoch_new_order_each_epoch_and_resume_seeds(local_ray, shards, tmp_path) -> None:
    # batch 2 divides each worker's 150 rows, so only streaming_split(equal=True) drops anything: N mod 2 = 1
    error, records = _fit(_cfg(shards), tmp_path / "fresh", epochs=[0, 1], batch=2, start_epoch=0)
    assert error is None, error
    orders = {}
    for epoch in (0, 1):
        shares = [np.asarray(records[r][str(epoch)]["ids"]) for r in (0, 1)]
        assert [len(s) for s in shares] == [N // 2, N // 2]
        assert all(records[r][str(epoch)]["batches"] == records[r][str(epoch)]["len"] == N // 4 for r in (0, 1))
        union = np.concatenate(shares)
        assert len(np.unique(union)) == len(union) == N - 1  # no row twice, one row (N mod 2) dropped
        orders[epoch] = union
        for r in (0, 1):
            for sample, crops in records[r][str(epoch)]["crops"].items():
                assert crops == _expected_crops(shards, int(sample), epoch), (epoch, sample)
    assert not np.array_equal(orders[0], orders[1])  # a new order every epoch
    crops0 = {**records[0]["0"]["crops"], **records[1]["0"]["crops"]}
    crops1 = {**records[0]["1"]["crops"], **records[1]["1"]["crops"]}
    common = set(crops0) & set(crops1)
    assert common and all(crops0[s] != crops1[s] for s in common)  # new crops every epoch

    # a resumed run whose next epoch is 2: the driver starts Ray Data's execution counter there, so the
    # tasks cut epoch 2's crops (and draw epoch 2's block order)
    error, resumed = _fit(_cfg(shards), tmp_path / "resumed", epochs=[2], batch=2, start_epoch=2)
    assert error is None, error
    union = np.concatenate([resumed[r]["2"]["ids"] for r in (0, 1)])
    assert len(np.unique(union)) == len(union) == N - 1
    checked = 0
    for r in (0, 1):
        for sample, crops in resumed[r]["2"]["crops"].items():
            assert crops == _expected_crops(shards, int(sample), 2)
            checked += 1
    assert checked > 0


@pytest.mark.slow
def test_ray_data_corrupt_bytes_follow_on_bad_file(local_ray, tmp_path) -> None:
    from nrcc_scale.data.preflight import find_data_error

    folder = tmp_path / "shards"
    write_shards(_source(), str(folder), rows_per_file=ROWS_PER_FILE, progress=False, log=lambda m: None)
    bad = 2 * ROWS_PER_FILE + 7
    corrupt_shard_row(folder / f"part-{2:05d}.parquet", 7)

    error, _ = _fit(_cfg(folder, on_bad_file="fail"), tmp_path / "fail", epochs=[0], batch=10, start_epoch=0)
    data_error = find_data_error(error)
    assert isinstance(data_error, DataError), error
    message = str(data_error)
    assert "part-00002.parquet" in message and f"sample {bad} holds corrupt image bytes" in message
    assert "\n" not in message

    error, records = _fit(_cfg(folder, on_bad_file="skip"), tmp_path / "skip", epochs=[0], batch=10, start_epoch=0)
    assert error is None, error
    assert all(records[r]["0"]["batches"] == records[r]["0"]["len"] == (N // 2) // 10 for r in (0, 1))


@pytest.mark.slow
def test_ray_data_refuses_a_cluster_without_a_cpu_for_data(local_ray, shards) -> None:
    from nrcc_scale.data.ray_data_loader import check_data_cpus

    cfg = _cfg(shards)
    cfg.train.cpus_per_worker = 2  # 2 x 2 = the local Ray's 4 CPUs: nothing left for Ray Data's tasks
    with pytest.raises(ConfigError, match="needs at least one CPU beyond the training workers' 4"):
        check_data_cpus(cfg)
    cfg.train.cpus_per_worker = 1
    check_data_cpus(cfg)


def _batch(shards: Path, ids: list[int]) -> dict:
    m = read_manifest(str(shards))
    table = pq.read_table(shards / m.files[0])
    return {"index": np.asarray(ids, np.int64), "label": np.asarray(table.column("label"))[ids],
            "image": np.asarray(table.column("image").to_pylist(), dtype=object)[ids],
            "path": np.asarray([f"/fs/{m.files[0]}"] * len(ids), dtype=object)}


def test_decode_views_cuts_the_other_loaders_crops_and_names_corrupt_bytes(tmp_path) -> None:
    from nrcc_scale.data.ray_data_loader import decode_views

    shards = tmp_path / "shards"
    write_shards(_source(), str(shards), rows_per_file=ROWS_PER_FILE, progress=False, log=lambda m: None)
    cfg = _cfg(shards)
    a = cfg.data.augment
    kwargs = {"seed": SEED, "resolution": 8, "scale": (a.crop_scale_min, a.crop_scale_max), "flip_p": a.flip_p,
              "num_views": 2, "on_bad_file": "fail", "uris": {"/fs/part-00000.parquet": "s3://b/x/part-00000.parquet"}}
    out = decode_views(_batch(shards, [3, 0, 17]), **kwargs)  # outside Ray Data the execution counter is 0
    assert out["views"].shape == (3, 2, 3, 8, 8) and out["views"].dtype == np.uint8
    assert out["index"].tolist() == [3, 0, 17] and out["epoch"].tolist() == [0, 0, 0]
    for j, sample in enumerate([3, 0, 17]):
        assert out["views"][j].tolist() == _expected_crops(shards, sample, 0)
    batch = _batch(shards, [3, 0, 17])
    batch["image"][1] = b"\xff\xd8 broken"
    with pytest.raises(DataError, match=r"^s3://b/x/part-00000\.parquet: sample 0 holds corrupt image bytes"):
        decode_views(batch, **kwargs)
    skipped = decode_views(batch, **{**kwargs, "on_bad_file": "skip"})
    assert skipped["views"].shape == (3, 2, 3, 8, 8)


def test_ray_data_config_and_cli_refuse_what_cannot_work(tmp_path, capsys) -> None:
    from nrcc_scale.cli import run_main
    from nrcc_scale.data.ray_data_loader import shuffle_seed, views_per_sample
    from nrcc_scale.train import main

    for fmt in ("parquet", "ray_data"):
        with pytest.raises(ConfigError, match=f"data.format = '{fmt}' needs the Parquet shards' location"):
            load_config([], [f"data.format={fmt}"])
    with pytest.raises(ConfigError, match="data.format"):
        load_config([], ["data.format=webdataset", "data.root=x"])
    assert run_main(main, ["--no-ray", "data.format=ray_data", f"data.root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error:") and "data.format=parquet" in err[0]
    from nrcc_scale.methods import build_method

    for overrides in ([], ["method.nrcc.negatives=augment"], ["method.name=cueco"],
                      ["method.name=infonce", "method.nrcc.negatives=augment"]):
        cfg = load_config([], overrides)  # the driver's count = what the worker's method asks for
        assert views_per_sample(cfg) == (3 if build_method(cfg, 8).needs_third_view else 2), overrides
    assert len({shuffle_seed(SEED, e, r) for e in range(3) for r in range(2)}) == 6
