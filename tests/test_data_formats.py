"""The readers of the papers' data sets, on small folders written here in each real on-disk format.

CIFAR python pickles (real key names), STL-10 column-major binaries, image-folder trees of real JPEG and
PNG files (with corrupt, truncated, non-image and unreadable files and empty folders), the tiny-imagenet-200
layout and an ImageNet-style wnid tree. Everything goes through ``registry.build_data`` as a run would.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nrcc_scale.config import DataConfig
from nrcc_scale.config_load import load_config
from nrcc_scale.data import imagenet
from nrcc_scale.data.__main__ import main as data_cli
from nrcc_scale.data.base import ConcatSource, DataError, SubsetSource
from nrcc_scale.data.catalog import BUILDERS, dataset_names
from nrcc_scale.data.cifar import (
    CIFAR100_COARSE_NAMES,
    CIFAR100_FINE_NAMES,
    CIFAR100_FINE_TO_COARSE,
    long_tail_counts,
    long_tail_indices,
)
from nrcc_scale.data.image_checks import BadImageWarning, check_image_file
from nrcc_scale.data.registry import build_data

REPO = Path(__file__).resolve().parents[1]


def _cfg(dataset: str, root: Path | str, **kw) -> DataConfig:
    extra = {k: kw.pop(k) for k in ("verify_files", "use_unlabeled") if k in kw}
    cfg = DataConfig(dataset=dataset, root=str(root), **kw)
    for key, value in extra.items():  # proposed DataConfig keys, read with getattr by the readers
        setattr(cfg, key, value)
    return cfg


# ----------------------------------------------------------------------------------------------------------
# Writers of the real formats
# ----------------------------------------------------------------------------------------------------------


def _cifar_rows(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose pixels encode (image id, row, column): R = id, G = row * 8, B = column * 8."""
    ids = np.arange(offset, offset + n)
    img = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    img[..., 0] = (ids % 256)[:, None, None]
    img[..., 1] = (np.arange(32) * 8)[None, :, None]
    img[..., 2] = (np.arange(32) * 8)[None, None, :]
    rows = img.transpose(0, 3, 1, 2).reshape(n, -1)  # R plane, G plane, B plane, each row-major
    return img, rows


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_cifar10(root: Path, per_class: int = 50, test_per_class: int = 3) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = np.tile(np.arange(10), per_class)
    images, rows = _cifar_rows(len(labels), 0)
    for b, chunk in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        _pickle(folder / f"data_batch_{b}", {b"batch_label": f"training batch {b} of 5".encode(),
                                             b"labels": labels[chunk].tolist(), b"data": rows[chunk],
                                             b"filenames": [f"{i}.png".encode() for i in chunk]})
    test_labels = np.tile(np.arange(10), test_per_class)
    test_images, test_rows = _cifar_rows(len(test_labels), 1000)
    _pickle(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": test_labels.tolist(),
                                    b"data": test_rows, b"filenames": [b"t.png"] * len(test_labels)})
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                  "ship", "truck")]
    _pickle(folder / "batches.meta", {b"num_cases_per_batch": len(labels) // 5, b"label_names": names,
                                      b"num_vis": 3072})
    return {"train_images": images, "train_labels": labels, "test_images": test_images,
            "test_labels": test_labels}


def write_cifar100(root: Path, per_fine: int = 4, test_per_fine: int = 1, coarse_table=None) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    table = CIFAR100_FINE_TO_COARSE if coarse_table is None else coarse_table
    out = {}
    for split, per in (("train", per_fine), ("test", test_per_fine)):
        fine = np.repeat(np.arange(100), per)
        _, rows = _cifar_rows(len(fine), 0)
        _pickle(folder / split, {b"filenames": [b"x.png"] * len(fine), b"batch_label": split.encode(),
                                 b"fine_labels": fine.tolist(), b"coarse_labels": table[fine].tolist(),
                                 b"data": rows})
        out[split] = (fine, np.asarray(table)[fine])
    _pickle(folder / "meta", {b"fine_label_names": [n.encode() for n in CIFAR100_FINE_NAMES],
                              b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_NAMES]})
    return out


def _stl_write(path: Path, images: np.ndarray) -> None:
    # STL-10 stores every image as 3 planes of column-major 96 x 96 pixels
    path.write_bytes(np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes())


def write_stl10(root: Path, n_train: int = 12, n_test: int = 8, n_unlabeled: int = 5) -> dict:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        labels = np.arange(n) % 10
        _stl_write(folder / f"{split}_X.bin", images)
        (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())  # stored as 1..10
        out[split] = (images, labels)
    unlabeled = rng.integers(0, 256, (n_unlabeled, 96, 96, 3), dtype=np.uint8)
    _stl_write(folder / "unlabeled_X.bin", unlabeled)
    out["unlabeled"] = unlabeled
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return out


def _jpeg_bytes(seed: int, size: tuple[int, int] = (20, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_image(path: Path, seed: int, fmt: str = "JPEG", size: tuple[int, int] = (20, 16),
                mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    img.save(path, format=fmt)


def write_folder(root: Path, classes: dict[str, int], start_seed: int = 0) -> None:
    seed = start_seed
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            fmt = "PNG" if i % 3 == 2 else "JPEG"
            write_image(root / cls / f"img_{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}", seed, fmt,
                        mode="L" if i == 1 else "RGB")  # one grayscale file per class: converted to RGB
            seed += 1


def add_bad_files(folder: Path) -> dict[str, Path]:
    """A corrupt JPEG, a truncated JPEG, a text file, and an unreadable (dangling) file in ``folder``."""
    bad = {"corrupt": folder / "corrupt.jpg", "truncated": folder / "truncated.jpg",
           "text": folder / "notes.txt", "unreadable": folder / "gone.jpg"}
    bad["corrupt"].write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))  # JPEG magic, then garbage
    good = _jpeg_bytes(99, size=(64, 48))
    bad["truncated"].write_bytes(good[: len(good) // 2])
    bad["text"].write_text("not an image\n")
    os.symlink(folder / "does-not-exist.jpg", bad["unreadable"])
    return bad


# ----------------------------------------------------------------------------------------------------------
# Registration and configs
# ----------------------------------------------------------------------------------------------------------


def test_every_configured_dataset_has_a_builder() -> None:
    assert set(dataset_names()) <= set(BUILDERS)


def test_all_dataset_configs_load() -> None:
    files = sorted((REPO / "configs" / "datasets").glob("*.yaml"))
    names = {f.stem for f in files}
    assert {"cifar10", "cifar100", "cifar20", "stl10", "imagenet10", "imagenet_dogs", "tinyimagenet",
            "imagenet1k_resnet50", "imagenet1k_vit_small", "cifar10_lt", "cifar20_lt"} <= names
    for path in files:
        cfg = load_config([path])
        assert cfg.data.dataset in dataset_names()
        assert cfg.data.root.startswith("/data/")
        assert cfg.model.projector_hidden == 4096 and cfg.model.projector_dim == 256
        assert cfg.train.batch_size == 256
        assert cfg.model.cifar_stem is None
        expected = {"cifar10": 32, "cifar100": 32, "cifar20": 32, "cifar10_lt": 32, "cifar20_lt": 32,
                    "stl10": 96}
        assert cfg.data.resolution == expected.get(path.stem, 224)
    assert load_config([REPO / "configs/datasets/imagenet1k_resnet50.yaml"]).model.backbone == "resnet50"
    assert load_config([REPO / "configs/datasets/imagenet1k_resnet50.yaml"]).train.epochs == 200
    assert load_config([REPO / "configs/datasets/imagenet1k_vit_small.yaml"]).model.backbone == "vit_small"
    assert load_config([REPO / "configs/datasets/cifar10.yaml"]).train.epochs == 1000
    assert load_config([REPO / "configs/datasets/cifar10.yaml"]).model.backbone == "resnet34"


# ----------------------------------------------------------------------------------------------------------
# CIFAR
# ----------------------------------------------------------------------------------------------------------


def test_cifar10_pickles_decode_to_images_labels_and_splits(tmp_path) -> None:
    truth = write_cifar10(tmp_path, per_class=5, test_per_class=2)
    bundle = build_data(_cfg("cifar10", tmp_path))
    assert len(bundle.train) == 50 and len(bundle.probe_test) == 20
    assert len(bundle.evaluate) == 70 and isinstance(bundle.evaluate, ConcatSource)  # train + test clustered
    np.testing.assert_array_equal(bundle.train.labels, truth["train_labels"])
    assert bundle.train.class_names[0] == "airplane" and bundle.train.num_classes == 10
    for i in (0, 7, 49):
        img = bundle.train.image(i)
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and img.flags.c_contiguous
        np.testing.assert_array_equal(img, truth["train_images"][i])  # channel planes and row order
    np.testing.assert_array_equal(bundle.probe_test.image(3), truth["test_images"][3])
    # probes are rows of the clustered set (no second embedding) and split it exactly
    assert isinstance(bundle.probe_train, SubsetSource) and bundle.probe_train.base is bundle.evaluate
    np.testing.assert_array_equal(bundle.probe_test.labels, truth["test_labels"])
    assert bundle.train.native_resolution == 32
    assert all(0 < m < 1 for m in bundle.train.mean) and all(0 < s < 1 for s in bundle.train.std)


def test_cifar10_root_may_be_the_batches_folder_itself(tmp_path) -> None:
    write_cifar10(tmp_path, per_class=2, test_per_class=1)
    bundle = build_data(_cfg("cifar10", tmp_path / "cifar-10-batches-py"))
    assert len(bundle.train) == 20


def test_cifar100_fine_and_cifar20_coarse_labels(tmp_path) -> None:
    truth = write_cifar100(tmp_path)
    fine = build_data(_cfg("cifar100", tmp_path))
    coarse = build_data(_cfg("cifar20", tmp_path))
    assert fine.train.num_classes == 100 and coarse.train.num_classes == 20
    np.testing.assert_array_equal(fine.train.labels, truth["train"][0])
    np.testing.assert_array_equal(coarse.train.labels, truth["train"][1])  # the coarse labels of the pickles
    np.testing.assert_array_equal(coarse.probe_test.labels, truth["test"][1])
    assert coarse.train.class_names == list(CIFAR100_COARSE_NAMES)
    assert coarse.train.class_names[14] == "people" and fine.train.class_names[2] == "baby"
    assert len(coarse.evaluate) == 500  # 400 train + 100 test


def test_cifar20_table_is_the_standard_superclass_mapping() -> None:
    table = CIFAR100_FINE_TO_COARSE
    assert table.shape == (100,) and np.bincount(table, minlength=20).tolist() == [5] * 20
    # spot checks against the CIFAR-100 meta: fine -> coarse by name
    fine = {n: i for i, n in enumerate(CIFAR100_FINE_NAMES)}
    coarse = {n: i for i, n in enumerate(CIFAR100_COARSE_NAMES)}
    for f, c in [("apple", "fruit_and_vegetables"), ("aquarium_fish", "fish"), ("baby", "people"),
                 ("bear", "large_carnivores"), ("beaver", "aquatic_mammals"), ("bicycle", "vehicles_1"),
                 ("lawn_mower", "vehicles_2"), ("worm", "non-insect_invertebrates"),
                 ("sea", "large_natural_outdoor_scenes"),
                 ("television", "household_electrical_devices"), ("wardrobe", "household_furniture")]:
        assert table[fine[f]] == coarse[c]
    # the first 20 entries of the widely used fine -> coarse array (SCAN, ProPos, the reference code)
    assert table[:20].tolist() == [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11]


def test_cifar20_rejects_pickles_whose_coarse_labels_disagree_with_the_table(tmp_path) -> None:
    wrong = CIFAR100_FINE_TO_COARSE.copy()
    wrong[[0, 1]] = wrong[[1, 0]]
    write_cifar100(tmp_path, per_fine=1, coarse_table=wrong)
    with pytest.raises(DataError, match="superclass table"):
        build_data(_cfg("cifar20", tmp_path))


def test_missing_cifar_files_name_the_path_and_what_to_download(tmp_path) -> None:
    with pytest.raises(DataError) as err:
        build_data(_cfg("cifar10", tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg and "not found" in msg
    assert "download CIFAR-10 python version" in msg and "cifar-10-batches-py" in msg
    with pytest.raises(DataError, match="cifar-100-python"):
        build_data(_cfg("cifar20", tmp_path))
    with pytest.raises(DataError, match="data.root is empty"):
        build_data(_cfg("cifar10", ""))
    with pytest.raises(DataError, match="does not exist"):
        build_data(_cfg("cifar10", tmp_path / "nowhere"))


def test_damaged_cifar_pickle_is_a_data_error(tmp_path) -> None:
    write_cifar10(tmp_path, per_class=2, test_per_class=1)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        build_data(_cfg("cifar10", tmp_path))


# ----------------------------------------------------------------------------------------------------------
# Long-tailed CIFAR
# ----------------------------------------------------------------------------------------------------------


def test_long_tail_profile_is_exponential_with_the_given_ratio() -> None:
    counts = long_tail_counts(5000, 10, 10.0)
    assert counts.tolist() == [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]  # Cao et al. 2019
    assert counts[0] / counts[-1] == 10
    c20 = long_tail_counts(2500, 20, 10.0)
    assert c20[0] == 2500 and c20[-1] == 250 and np.all(np.diff(c20) < 0)
    expected = np.floor(2500 * 10.0 ** (-np.arange(20) / 19) + 1e-9)
    np.testing.assert_array_equal(c20, expected)


def test_cifar10_lt_builder_follows_the_profile_and_keeps_test_balanced(tmp_path) -> None:
    write_cifar10(tmp_path, per_class=50, test_per_class=3)
    bundle = build_data(_cfg("cifar10_lt", tmp_path, imbalance_ratio=10.0), seed=3)
    counts = np.bincount(bundle.train.labels, minlength=10)
    np.testing.assert_array_equal(counts, long_tail_counts(50, 10, 10.0))
    assert counts.max() / counts.min() == 10
    assert bundle.train.class_counts.tolist() == counts.tolist()  # the builder reports its counts
    assert "per-class counts [50, 38, 29, 23, 17, 13, 10, 8, 6, 5]" in bundle.train.describe()
    assert np.bincount(bundle.probe_test.labels).tolist() == [3] * 10  # the test split stays balanced
    assert bundle.evaluate is bundle.train  # clustering sees the long-tailed set (ratio 10)
    again = build_data(_cfg("cifar10_lt", tmp_path), seed=3)
    other = build_data(_cfg("cifar10_lt", tmp_path), seed=4)
    np.testing.assert_array_equal(again.train.indices, bundle.train.indices)  # seeded
    assert not np.array_equal(other.train.indices, bundle.train.indices)
    np.testing.assert_array_equal(np.bincount(other.train.labels, minlength=10), counts)


def test_cifar20_lt_and_other_ratios(tmp_path) -> None:
    write_cifar100(tmp_path, per_fine=4)  # 20 images per superclass
    bundle = build_data(_cfg("cifar20_lt", tmp_path, imbalance_ratio=10.0))
    counts = np.bincount(bundle.train.labels, minlength=20)
    assert counts[0] == 20 and counts[-1] == 2 and counts.max() / counts.min() == 10
    bundle5 = build_data(_cfg("cifar20_lt", tmp_path, imbalance_ratio=5.0))
    counts5 = np.bincount(bundle5.train.labels, minlength=20)
    assert counts5[0] == 20 and counts5[-1] == 4


def test_longtail_cli_writes_the_builders_index_list(tmp_path, capsys) -> None:
    write_cifar10(tmp_path, per_class=50, test_per_class=1)
    out = tmp_path / "lt.npy"
    assert data_cli(["longtail", "--dataset", "cifar10", "--root", str(tmp_path), "--ratio", "10",
                     "--out", str(out), "--seed", "3"]) == 0
    rows = np.load(out)
    bundle = build_data(_cfg("cifar10_lt", tmp_path), seed=3)
    np.testing.assert_array_equal(rows, bundle.train.indices)
    assert "airplane=50" in capsys.readouterr().out
    np.testing.assert_array_equal(rows, long_tail_indices(bundle.train.base.labels, 10.0, 3))


# ----------------------------------------------------------------------------------------------------------
# STL-10
# ----------------------------------------------------------------------------------------------------------


def test_stl10_binaries_column_major_layout_and_splits(tmp_path) -> None:
    truth = write_stl10(tmp_path)
    bundle = build_data(_cfg("stl10", tmp_path))
    assert len(bundle.train) == 12 and len(bundle.evaluate) == 20  # clusters train + test (13k at full size)
    np.testing.assert_array_equal(bundle.train.image(5), truth["train"][0][5])
    np.testing.assert_array_equal(bundle.probe_test.image(2), truth["test"][0][2])
    np.testing.assert_array_equal(bundle.train.labels, truth["train"][1])  # 1..10 on disk -> 0..9
    assert bundle.train.class_names[7] == "monkey" and bundle.train.native_resolution == 96


def test_stl10_unlabelled_split_is_optional(tmp_path) -> None:
    truth = write_stl10(tmp_path)
    bundle = build_data(_cfg("stl10", tmp_path, use_unlabeled=True))
    assert len(bundle.train) == 17 and (bundle.train.labels[12:] == -1).all()
    np.testing.assert_array_equal(bundle.train.image(14), truth["unlabeled"][2])
    assert len(bundle.evaluate) == 20 and (bundle.evaluate.labels >= 0).all()  # never clustered or probed


def test_stl10_unlabelled_split_from_the_cli(tmp_path, capsys) -> None:
    write_stl10(tmp_path)
    assert data_cli(["describe", "--dataset", "stl10", "--root", str(tmp_path), "--use-unlabeled"]) == 0
    train_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("train "))
    assert train_line.split()[1:3] == ["17", "5"]  # 12 labelled + 5 unlabelled images


def test_stl10_missing_or_truncated_files(tmp_path) -> None:
    with pytest.raises(DataError, match="stl10_binary/class_names.txt not found.*STL-10 binary"):
        build_data(_cfg("stl10", tmp_path))
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="test_X.bin.*not a multiple"):
        build_data(_cfg("stl10", tmp_path))


# ----------------------------------------------------------------------------------------------------------
# Image folders
# ----------------------------------------------------------------------------------------------------------


def test_image_folder_without_splits_is_lazy_sorted_and_held_out(tmp_path) -> None:
    write_folder(tmp_path / "flowers", {"tulip": 6, "rose": 5, "daisy": 4})
    bundle = build_data(_cfg("image_folder", tmp_path / "flowers", holdout_fraction=0.2), seed=0)
    source = bundle.evaluate
    assert source.class_names == ["daisy", "rose", "tulip"] and len(source) == 15
    assert np.bincount(source.labels).tolist() == [4, 5, 6]
    rel = [source.paths.relative(i) for i in range(len(source))]
    assert rel == sorted(rel)  # listed once, sorted, deterministic
    img = source.image(1)  # a grayscale file
    assert img.shape == (16, 20, 3) and img.dtype == np.uint8 and (img[..., 0] == img[..., 1]).all()
    assert source.image(2).shape == (16, 20, 3)  # a PNG
    assert len(bundle.train) + len(bundle.probe_test) == 15
    assert source.native_resolution == 16


def test_image_folder_with_train_and_val_splits(tmp_path) -> None:
    write_folder(tmp_path / "train", {"a": 3, "b": 3, "c": 2})
    write_folder(tmp_path / "val", {"a": 1, "c": 2}, start_seed=100)  # val lacks class b: allowed
    bundle = build_data(_cfg("image_folder", tmp_path))
    assert len(bundle.train) == 8 and len(bundle.probe_test) == 3 and len(bundle.evaluate) == 11
    assert bundle.probe_test.labels.tolist() == [0, 2, 2]  # labels follow the training classes
    (tmp_path / "val" / "d").mkdir()
    write_image(tmp_path / "val" / "d" / "x.jpg", 5)
    with pytest.raises(DataError, match="class folders that .*train lacks: d"):
        build_data(_cfg("image_folder", tmp_path))


def test_bad_files_fail_with_their_paths(tmp_path) -> None:
    root = tmp_path / "set"
    write_folder(root, {"cat": 4, "dog": 4})
    bad = add_bad_files(root / "dog")
    with pytest.raises(DataError) as err:
        build_data(_cfg("image_folder", root))
    msg = str(err.value)
    for path in bad.values():
        assert str(path) in msg
    assert "4 unreadable, corrupt or non-image file(s)" in msg and "on_bad_file=skip" in msg


def test_bad_files_are_skipped_with_a_warning(tmp_path) -> None:
    root = tmp_path / "set"
    write_folder(root, {"cat": 4, "dog": 4})
    bad = add_bad_files(root / "dog")
    with pytest.warns(BadImageWarning, match="skipped 4 ") as record:
        bundle = build_data(_cfg("image_folder", root, on_bad_file="skip"))
    assert str(bad["truncated"]) in str(record[0].message)
    source = bundle.evaluate
    assert len(source) == 8 and np.bincount(source.labels).tolist() == [4, 4]
    for i in range(len(source)):
        assert source.image(i).shape == (16, 20, 3)


def test_header_check_catches_truncated_jpegs_but_accepts_trailing_bytes(tmp_path) -> None:
    good = _jpeg_bytes(1, size=(64, 48))
    (tmp_path / "ok.jpg").write_bytes(good)
    (tmp_path / "trailing.jpg").write_bytes(good + b"\x00" * 2000)  # junk after the end marker: loads fine
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) * 2 // 3])
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert check_image_file(tmp_path / "ok.jpg") is None
    assert check_image_file(tmp_path / "trailing.jpg") is None
    assert "truncated" in check_image_file(tmp_path / "cut.jpg")
    assert check_image_file(tmp_path / "text.jpg") is not None
    assert "empty" in check_image_file(tmp_path / "empty.jpg")
    assert check_image_file(tmp_path / "cut.jpg", "decode") is not None


def test_unchecked_bad_file_fails_or_is_replaced_when_read(tmp_path) -> None:
    root = tmp_path / "set"
    write_folder(root, {"cat": 3, "dog": 3})
    (root / "dog" / "img_001.jpg").write_bytes(_jpeg_bytes(7)[:200])  # corrupt after indexing is skipped
    fail = build_data(_cfg("image_folder", root, verify_files="none")).evaluate
    with pytest.raises(DataError, match=r"cannot read image .*dog/img_001\.jpg.*on_bad_file=skip"):
        fail.image(4)
    skip = build_data(_cfg("image_folder", root, verify_files="none", on_bad_file="skip")).evaluate
    with pytest.warns(BadImageWarning, match=r"img_001\.jpg"):
        img = skip.image(4)
    np.testing.assert_array_equal(img, skip.image(5))  # the next image of the same class
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        skip.image(4)  # warned once per file


def test_empty_class_folder_and_empty_data_set_name_the_folder(tmp_path) -> None:
    root = tmp_path / "set"
    write_folder(root, {"cat": 2})
    (root / "dog").mkdir()
    with pytest.raises(DataError, match=f"class folder {root / 'dog'} contains no readable images"):
        build_data(_cfg("image_folder", root))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{empty} contains no class folders"):
        build_data(_cfg("image_folder", empty))
    only_bad = tmp_path / "only_bad"
    (only_bad / "x").mkdir(parents=True)
    (only_bad / "x" / "a.jpg").write_text("nope")
    with pytest.warns(BadImageWarning), pytest.raises(DataError, match="no images found"):
        build_data(_cfg("image_folder", only_bad, on_bad_file="skip"))


def test_hidden_files_are_ignored(tmp_path) -> None:
    root = tmp_path / "set"
    write_folder(root, {"cat": 2, "dog": 2})
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / ".hidden_class").mkdir()
    assert len(build_data(_cfg("image_folder", root)).evaluate) == 4


# ----------------------------------------------------------------------------------------------------------
# Tiny-ImageNet and ImageNet
# ----------------------------------------------------------------------------------------------------------


def write_tinyimagenet(root: Path, wnids: list[str], train_per: int = 3, val_per: int = 2) -> None:
    folder = root / "tiny-imagenet-200"
    (folder / "wnids.txt").parent.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # not sorted in the real file
    (folder / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    seed = 0
    lines = []
    for w in wnids:
        boxes = []
        for i in range(train_per):
            write_image(folder / "train" / w / "images" / f"{w}_{i}.JPEG", seed, size=(64, 64))
            boxes.append(f"{w}_{i}.JPEG\t0\t0\t63\t63")
            seed += 1
        (folder / "train" / w / f"{w}_boxes.txt").write_text("\n".join(boxes) + "\n")
    k = 0
    for w in wnids:
        for _ in range(val_per):
            write_image(folder / "val" / "images" / f"val_{k}.JPEG", 500 + k, size=(64, 64))
            lines.append(f"val_{k}.JPEG\t{w}\t1\t2\t30\t40")
            k += 1
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    write_image(folder / "test" / "images" / "test_0.JPEG", 999, size=(64, 64))  # unlabelled: ignored


def test_tinyimagenet_layout(tmp_path) -> None:
    wnids = ["n01443537", "n01629819", "n01641577"]
    write_tinyimagenet(tmp_path, wnids)
    bundle = build_data(_cfg("tinyimagenet", tmp_path))
    assert bundle.train.class_names == sorted(wnids) and len(bundle.train) == 9
    assert bundle.evaluate is bundle.train  # the paper clusters the 100,000 training images
    assert len(bundle.probe_test) == 6 and np.bincount(bundle.probe_test.labels).tolist() == [2, 2, 2]
    assert bundle.train.native_resolution == 64 and bundle.train.image(0).shape == (64, 64, 3)
    # val_k belongs to wnids[k // 2] in the annotation file
    val = bundle.probe_test
    for i in range(len(val)):
        k = int(Path(val.paths.relative(i)).stem.split("_")[1])
        assert val.class_names[val.labels[i]] == wnids[k // 2]


def test_tinyimagenet_missing_annotations(tmp_path) -> None:
    write_tinyimagenet(tmp_path, ["n01443537", "n01629819"])
    (tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match="val_annotations.txt not found.*tiny-imagenet-200"):
        build_data(_cfg("tinyimagenet", tmp_path / "tiny-imagenet-200"))


def write_imagenet(root: Path, wnids: list[str], per: int = 2, val: str = "folders") -> None:
    seed = 0
    rows = []
    for w in wnids:
        for i in range(per):
            write_image(root / "train" / w / f"{w}_{i}.JPEG", seed, size=(40, 30))
            seed += 1
        if val == "folders":
            write_image(root / "val" / w / f"ILSVRC2012_val_{seed:08d}.JPEG", seed + 1000, size=(40, 30))
        elif val == "flat":
            name = f"ILSVRC2012_val_{seed:08d}"
            write_image(root / "val" / f"{name}.JPEG", seed + 1000, size=(40, 30))
            rows.append(f"{name},{w} 1 2 30 20 {w} 3 4 10 10")
    if val == "flat":
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")


def _imagenet_wnids() -> tuple[list[str], list[str], list[str]]:
    in10 = imagenet.load_wnids("imagenet10")
    dogs = imagenet.load_wnids("imagenet_dogs")
    others = ["n01440764", "n01443537"]
    return in10, dogs, sorted(set(in10) | set(dogs) | set(others))


def test_shipped_wnid_lists() -> None:
    in10, dogs, _ = _imagenet_wnids()
    assert len(in10) == 10 and len(set(in10)) == 10 and "n02056570" in in10 and "n07747607" in in10
    assert len(dogs) == 15 and len(set(dogs)) == 15 and "n02085936" in dogs and "n02112137" in dogs
    assert all(w.startswith("n") and len(w) == 9 for w in in10 + dogs)


def test_imagenet_subsets_take_their_wnids_from_an_imagenet_tree(tmp_path) -> None:
    in10, dogs, every = _imagenet_wnids()
    write_imagenet(tmp_path, every, per=2, val="folders")
    b10 = build_data(_cfg("imagenet10", tmp_path))
    assert b10.train.class_names == sorted(in10) and len(b10.train) == 20
    assert b10.evaluate is b10.train  # 13,000 training images at full size (paper Table 12)
    assert len(b10.probe_test) == 10  # the val images of the 10 classes
    assert b10.train.native_resolution == 224 and b10.train.image(0).shape == (30, 40, 3)
    bdogs = build_data(_cfg("imagenet_dogs", tmp_path))
    assert bdogs.train.class_names == sorted(dogs) and len(bdogs.train) == 30
    b1k = build_data(_cfg("imagenet1k", tmp_path))
    assert b1k.train.num_classes == len(every) and len(b1k.probe_test) == len(every)


def test_imagenet_flat_val_with_loc_solution_and_no_val(tmp_path) -> None:
    in10, _, every = _imagenet_wnids()
    write_imagenet(tmp_path / "a", every, per=3, val="flat")
    b1k = build_data(_cfg("imagenet1k", tmp_path / "a"))
    assert len(b1k.probe_test) == len(every)
    # each flat val file carries the label of its solution row
    for i in range(len(b1k.probe_test)):
        assert b1k.probe_test.image(i).shape == (30, 40, 3)
    assert sorted(b1k.probe_test.labels.tolist()) == list(range(len(every)))
    b10 = build_data(_cfg("imagenet10", tmp_path / "a"))
    assert len(b10.probe_test) == 10 and b10.probe_test.class_names == sorted(in10)
    write_imagenet(tmp_path / "b", in10, per=5, val="none")
    held = build_data(_cfg("imagenet10", tmp_path / "b", holdout_fraction=0.2), seed=1)
    assert len(held.train) == 50 and len(held.probe_test) == 10  # a stratified hold-out for the probes
    assert np.bincount(held.probe_test.labels).tolist() == [1] * 10


def test_imagenet_subset_missing_classes_are_listed(tmp_path) -> None:
    in10, _, _ = _imagenet_wnids()
    write_imagenet(tmp_path, in10[:7], per=1, val="none")
    with pytest.raises(DataError) as err:
        build_data(_cfg("imagenet10", tmp_path))
    assert all(w in str(err.value) for w in in10[7:]) and "train/" in str(err.value)
    with pytest.raises(DataError, match="train not found"):
        build_data(_cfg("imagenet1k", tmp_path / "train" / in10[0]))


# ----------------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------------


def test_describe_cli_prints_counts_per_split_and_class(tmp_path, capsys) -> None:
    write_cifar10(tmp_path, per_class=50, test_per_class=2)
    assert data_cli(["describe", "--dataset", "cifar10_lt", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "probe_test" in out and "airplane" in out
    train_line = next(line for line in out.splitlines() if line.startswith("train "))
    assert train_line.split()[1] == "199"  # 50 + 38 + ... + 5: the long-tailed split, not all 500
    lines = [line for line in out.splitlines() if line.startswith("truck")]
    assert lines and lines[0].split()[1:] == ["5", "5", "5", "2"]


def test_cli_user_mistakes_are_one_line_and_exit_2(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cases = [
        ["describe", "--dataset", "cifar10", "--root", str(tmp_path / "missing")],
        ["prepare", "--dataset", "cifar10", "--root", str(tmp_path), "--out", str(tmp_path / "x.txt")],
        ["longtail", "--dataset", "cifar10", "--root", str(tmp_path), "--ratio", "0.5", "--out", "a.npy"],
        ["describe", "--root", str(tmp_path)],
    ]
    for args in cases:
        proc = subprocess.run([sys.executable, "-m", "nrcc_scale.data", *args], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert "Traceback" not in proc.stderr
