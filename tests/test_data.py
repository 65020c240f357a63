"""Loader tests: documented counts on the real data (CI has it), clear errors on bad input, stand-ins."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from common import data
from common.data import DataError
from conftest import real_data


# ---------------------------------------------------------------- real data, documented counts
@real_data("omniglot")
def test_omniglot_counts():
    ds, info = data.load_omniglot(size=64)
    assert len(ds) == 19_280 and len(ds.characters) == 964 and len(ds.alphabets) == 30
    assert ds.images.shape == (19_280, 1, 64, 64) and ds.images.dtype == torch.uint8
    assert int(ds.character.max()) == 963 and int(ds.alphabet.max()) == 29
    assert torch.bincount(ds.character).tolist() == [20] * 964
    assert info.source == "real" and len(info.fingerprint) == 64
    train, test = data.load_omniglot_course_split()
    assert (len(train), len(test), len(set(train) & set(test))) == (14_400, 12_149, 7_269)
    assert set(train) <= set(ds.relpaths)


@real_data("clouds")
def test_clouds_counts():
    train, test, info = data.load_clouds(size=64)
    assert (len(train), len(test)) == (474, 486) and len(train.classes) == 7
    assert train.images.shape == (474, 3, 64, 64) and train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [66, 60, 14, 91, 133, 49, 61]
    assert torch.bincount(test.labels).tolist() == [77, 64, 11, 120, 103, 40, 71]
    assert train.classes == data.CLOUD_CLASSES and info.sizes == {"train": 474, "test": 486}
    folder = data.clouds_image_folder("train")
    assert len(folder) == 474 and folder.classes == train.classes


@real_data("electricity")
def test_electricity_counts():
    train, test, info = data.load_electricity()
    assert (len(train), len(test)) == (105_215, 35_040)
    assert train["timestamp"].max() < test["timestamp"].min()
    assert str(train["timestamp"].dtype).startswith("datetime64")
    assert info.sizes == {"train": 105_215, "test": 35_040}


@real_data("water_potability")
def test_water_counts():
    train, test, _ = data.load_water_course()
    assert (len(train), len(test)) == (1_508, 503)
    assert train[data.WATER_FEATURES].min().min() >= 0 and train[data.WATER_FEATURES].max().max() <= 1
    raw, _ = data.load_water_raw()
    assert len(raw) == 3_276 and raw["Potability"].value_counts().to_dict() == {0: 1998, 1: 1278}
    assert raw[["ph", "Sulfate", "Trihalomethanes"]].isna().any().all()


@real_data("zoo")
def test_zoo_counts():
    df, _ = data.load_zoo()
    assert len(df) == 101 and df["type"].value_counts().sort_index().tolist() == [41, 20, 5, 13, 4, 8, 10]
    toy, _ = data.load_animal_toy()
    assert len(toy) == 5 and toy["type"].nunique() == 3


@real_data("ds_salaries")
def test_salaries_counts():
    df, _ = data.load_salaries()
    assert len(df) == 3_755 and sorted(df["work_year"].unique()) == [2020, 2021, 2022, 2023]
    assert set(df["experience_level"]) == {"EN", "MI", "SE", "EX"}
    assert len(data.load_salaries_toy()[0]) == 5


# ---------------------------------------------------------------- bad input: clear errors
def test_missing_data_dir_names_path_and_source(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        data.load_electricity(tmp_path / "nowhere")
    msg = str(e.value)
    assert "does not exist" in msg and str(tmp_path / "nowhere") in msg and "UCI ElectricityLoadDiagrams" in msg


def test_fallback_to_synthetic_only_by_the_option_never_by_the_environment(tmp_path, monkeypatch):
    from common import cli
    monkeypatch.setenv("SYNTHETIC_FALLBACK", "1")          # the old hidden switch: no longer read
    monkeypatch.setattr(data, "SYNTHETIC_IF_MISSING", False)
    with pytest.raises(DataError, match="does not exist"):
        data.load_zoo(tmp_path / "nowhere")
    args = cli.parse_args(cli.base_parser("99_x", "x"), ["--synthetic-if-missing"])
    assert data.SYNTHETIC_IF_MISSING is True and cli.config_of(args)["synthetic_if_missing"] is True
    _, info = data.load_zoo(tmp_path / "nowhere")
    assert info.source == "synthetic"
    args = cli.parse_args(cli.base_parser("99_x", "x"), [])
    assert data.SYNTHETIC_IF_MISSING is False and "synthetic_if_missing" not in cli.config_of(args)


def test_missing_file_names_it(tmp_path, monkeypatch):
    (tmp_path / "zoo").mkdir()
    with pytest.raises(DataError, match=r"file or folder not found[\s\S]*zoo\.data[\s\S]*UCI Zoo"):
        data.load_zoo(tmp_path)


def test_csv_missing_column(tmp_path):
    d = tmp_path / "electricity"
    d.mkdir()
    (d / "electricity_train.csv").write_text("timestamp,watts\n2011-01-01 00:15:00,1.0\n")
    (d / "electricity_test.csv").write_text("timestamp,consumption\n2014-01-01 00:00:00,1.0\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['consumption'\][\s\S]*electricity_train\.csv"):
        data.load_electricity(tmp_path)


def test_csv_non_numeric_and_zero_rows(tmp_path):
    d = tmp_path / "water_potability"
    d.mkdir()
    header = ",".join(data.WATER_FEATURES + ["Potability"])
    (d / "water_train.csv").write_text(header + "\n" + ",".join(["0.5"] * 9 + ["1"]) + "\n"
                                       + ",".join(["abc"] + ["0.5"] * 8 + ["0"]) + "\n")
    (d / "water_test.csv").write_text(header + "\n")
    with pytest.raises(DataError, match=r"non-numeric value 'abc' in column 'ph' at data row 2"):
        data.load_water_course(tmp_path)
    (d / "water_train.csv").write_text(header + "\n" + ",".join(["0.5"] * 9 + ["1"]) + "\n")
    with pytest.raises(DataError, match=r"zero rows[\s\S]*water_test\.csv"):
        data.load_water_course(tmp_path)


def _tiny_clouds(tmp_path, n=2):
    from PIL import Image
    for split in ("clouds_train", "clouds_test"):
        for c in ("a sky", "b sky"):
            d = tmp_path / "clouds" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (32, 32), (i * 40, 100, 200)).save(d / f"{i}.jpg")
    return tmp_path


def test_corrupt_image_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "cache"))
    root = _tiny_clouds(tmp_path)
    train, test, info = data.load_clouds(root, size=16)
    assert train.images.shape == (4, 3, 16, 16) and train.classes == ["a sky", "b sky"]
    bad = root / "clouds" / "clouds_test" / "b sky" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image file .*broken\.jpg"):
        data.load_clouds(root, size=16)


def test_empty_class_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "cache"))
    root = _tiny_clouds(tmp_path)
    (root / "clouds" / "clouds_train" / "c empty").mkdir()
    with pytest.raises(DataError, match=r"class folder 'c empty' has no image files"):
        data.load_clouds(root, size=16)


def test_image_cache_is_reused_and_keyed_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "cache"))
    root = _tiny_clouds(tmp_path)
    a = data.load_clouds(root, size=16)
    assert len(list((tmp_path / "cache").glob("clouds-*.pt"))) == 2
    b = data.load_clouds(root, size=16)
    assert torch.equal(a[0].images, b[0].images) and a[2].fingerprint == b[2].fingerprint
    shutil.copy(root / "clouds" / "clouds_train" / "a sky" / "1.jpg", root / "clouds" / "clouds_train" / "a sky" / "0.jpg")
    c = data.load_clouds(root, size=16)
    assert c[2].fingerprint != a[2].fingerprint


def test_torchvision_omniglot_layout_is_accepted(tmp_path, monkeypatch):
    from PIL import Image
    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "omniglot-py" / "images_background" / "Latin" / "character01"
    d.mkdir(parents=True)
    Image.new("L", (105, 105), 255).save(d / "0001_01.png")
    ds, info = data.load_omniglot(tmp_path, size=64)
    assert len(ds) == 1 and ds.images.shape == (1, 1, 64, 64) and ds.relpaths == ["Latin/character01/0001_01.png"]


# ---------------------------------------------------------------- synthetic stand-ins
def test_synthetic_stand_ins_keep_shapes_and_are_labelled(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYNTHETIC_IF_MISSING", True)
    empty = tmp_path / "empty"
    empty.mkdir()
    tr, te, info = data.load_electricity(empty)
    assert info.source == "synthetic" and list(tr.columns) == ["timestamp", "consumption"]
    assert tr["timestamp"].max() < te["timestamp"].min()
    ds, info = data.load_omniglot(empty)
    assert info.source == "synthetic" and len(ds.characters) == 964 and len(ds.alphabets) == 30
    assert ds.images.shape[1:] == (1, 64, 64)
    ctr, cte, info = data.load_clouds(empty, size=64)
    assert info.source == "synthetic" and ctr.images.shape[1:] == (3, 64, 64) and len(ctr.classes) == 7
    zoo, info = data.load_zoo(empty)
    assert info.source == "synthetic" and zoo["type"].value_counts().sort_index().tolist() == [41, 20, 5, 13, 4, 8, 10]
    raw, info = data.load_water_raw(empty)
    assert list(raw.columns) == data.WATER_FEATURES + ["Potability"] and raw["ph"].isna().any()
    sal, info = data.load_salaries(empty)
    assert list(sal.columns) == data.SALARY_COLUMNS and info.source == "synthetic"
    # deterministic
    assert data.load_omniglot(empty)[1].fingerprint == data.load_omniglot(empty)[1].fingerprint
    assert torch.equal(data.synthetic_clouds()[0].images, data.synthetic_clouds()[0].images)


def test_missing_datasets_lists_names(tmp_path):
    assert data.missing_datasets(tmp_path) == list(data.DATASET_CHECKS)
