"""Loaders for the course datasets: real data from ``DATA_DIR``, or labelled synthetic stand-ins.

Every loader returns the data plus a :class:`DataInfo` (name, ``real``/``synthetic``, a
fingerprint of the files read, split sizes) that goes into the result JSON. A missing or
malformed dataset raises :class:`DataError` naming the path looked at, what was expected and
where to download it. Synthetic stand-ins are used only when asked for (``synthetic=True``, the
scripts' ``--synthetic``) or, for a dataset that is not found, with the scripts' ``--synthetic-if-missing``
(``run_all.sh`` passes it, and says so, when its data check finds datasets missing; it sets
``SYNTHETIC_IF_MISSING``); they keep the real data's shapes, columns and class counts, but are small,
and are always labelled.
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

# Where each dataset comes from (shown in errors and in the README's data table).
SOURCES = {
    "omniglot": ("omniglot/images_background/<alphabet>/<character>/*.png (or omniglot-py/images_background)",
                 "https://github.com/brendenlake/omniglot (python/images_background.zip; MIT)"),
    "clouds": ("clouds/clouds_train/<class>/*.jpg and clouds/clouds_test/<class>/*.jpg",
               "Kaggle 'clouds-photos' (jockeroika), the course layout; licence not stated"),
    "electricity": ("electricity/electricity_train.csv and electricity/electricity_test.csv",
                    "UCI ElectricityLoadDiagrams20112014 (one client, z-scored; course files from "
                    "github.com/SimeonHristov99/ML_24-25, MIT)"),
    "water_potability": ("water_potability/water_train.csv, water_test.csv and water_potability.csv",
                         "Kaggle adityakadiwal/water-potability (course files from "
                         "github.com/SimeonHristov99/ML_24-25)"),
    "zoo": ("zoo/zoo.data (UCI, no header) and zoo/animal_dataset.csv (course toy)",
            "UCI Zoo, https://archive.ics.uci.edu/dataset/111/zoo (Forsyth 1990)"),
    "ds_salaries": ("ds_salaries/ds_salaries.csv and ds_salaries/data_science_salaries.csv (course toy)",
                    "Kaggle 'Data Science Salaries 2023' (arnabchaki), 3,755 rows"),
}

WATER_FEATURES = ["ph", "Hardness", "Solids", "Chloramines", "Sulfate", "Conductivity",
                  "Organic_carbon", "Trihalomethanes", "Turbidity"]
ZOO_COLUMNS = ["animal_name", "hair", "feathers", "eggs", "milk", "airborne", "aquatic", "predator",
               "toothed", "backbone", "breathes", "venomous", "fins", "legs", "tail", "domestic",
               "catsize", "type"]
ANIMAL_TOY_COLUMNS = ["animal_name", "hair", "feathers", "eggs", "milk", "predator", "legs", "tail", "type"]
SALARY_COLUMNS = ["work_year", "experience_level", "employment_type", "job_title", "salary",
                  "salary_currency", "salary_in_usd", "employee_residence", "remote_ratio",
                  "company_location", "company_size"]
SALARY_TOY_COLUMNS = ["experience_level", "employment_type", "remote_ratio", "company_size", "salary_in_usd"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class DataError(RuntimeError):
    """A dataset is missing or malformed. The message names the path, the expectation and the source."""


@dataclass
class DataInfo:
    """What a result JSON records about the data it was computed on."""
    name: str
    source: str                      # "real" | "synthetic"
    fingerprint: str                 # sha256 over the files read (or over the synthetic recipe)
    sizes: dict = field(default_factory=dict)
    path: str | None = None
    notes: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ImageSet:
    """Decoded images of one split: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""
    images: torch.Tensor
    labels: torch.Tensor
    classes: list
    paths: list
    file_sha256: list

    def __len__(self) -> int:
        return len(self.labels)


# --------------------------------------------------------------------------- paths and errors

def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The data root: ``override``, else ``$DATA_DIR``, else ``data/`` in the repository."""
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get("DATA_DIR")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "data"


def cache_dir() -> Path:
    """Where decoded-image caches go: ``$CACHE_DIR``, else ``data/cache`` in the repository (git-ignored)."""
    env = os.environ.get("CACHE_DIR")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "data" / "cache"


def _error(name: str, path: Path, problem: str) -> DataError:
    expected, origin = SOURCES[name]
    return DataError(f"{name}: {problem}\n  looked at: {path}\n  expected:  DATA_DIR/{expected}\n"
                     f"  get it from: {origin}\n  (set DATA_DIR to the folder holding '{name}/'; "
                     f"see README.md, section Data; or run with --synthetic)")


SYNTHETIC_IF_MISSING = False   # set by the scripts' --synthetic-if-missing (common.cli.parse_args); never by the environment


def _use_synthetic(name: str, synthetic: bool, root: Path, required: list[Path]) -> bool:
    """True if the synthetic stand-in should be used; raise DataError if real data is missing."""
    if synthetic:
        return True
    missing = [p for p in required if not p.exists()]
    if not missing:
        return False
    if SYNTHETIC_IF_MISSING:
        print(f"WARNING: {name}: real data not found at {missing[0]}; using the SYNTHETIC stand-in "
              f"(results are marked source=synthetic)", file=sys.stderr)
        return True
    if not root.exists():
        raise _error(name, root, "the data directory does not exist")
    raise _error(name, missing[0], "file or folder not found")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(paths: list[Path], root: Path, file_hashes: list[str] | None = None) -> str:
    """sha256 over (path relative to ``root``, file sha256) of every file, in sorted order."""
    hashes = file_hashes or [sha256_file(p) for p in paths]
    h = hashlib.sha256()
    for rel, fh in sorted(zip((str(Path(p).relative_to(root)) for p in paths), hashes)):
        h.update(f"{rel}\0{fh}\n".encode())
    return h.hexdigest()


def _synthetic_fingerprint(name: str, **recipe) -> str:
    return "synthetic-" + hashlib.sha256(f"{name}{sorted(recipe.items())}".encode()).hexdigest()[:16]


def read_csv_checked(path: Path, name: str, columns: list[str], numeric: list[str] | None = None,
                     allow_missing: bool = False, **read_kwargs) -> pd.DataFrame:
    """Read a CSV and check it: columns present, at least one row, ``numeric`` columns numeric.

    Problems raise :class:`DataError` naming the file, the column and (for a bad value) the row,
    instead of a pandas traceback from deep inside.
    """
    try:
        df = pd.read_csv(path, **read_kwargs)
    except FileNotFoundError:
        raise _error(name, path, "file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise _error(name, path, f"not a readable CSV ({type(e).__name__}: {e})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise _error(name, path, f"missing column(s) {missing}; found {list(df.columns)}")
    if len(df) == 0:
        raise _error(name, path, "the CSV has a header but zero rows")
    for col in numeric or []:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise _error(name, path, f"non-numeric value {df[col].iloc[row]!r} in column {col!r} "
                                     f"at data row {row + 1}")
        if not allow_missing and values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise _error(name, path, f"empty value in column {col!r} at data row {row + 1}")
        df[col] = values
    return df


def _info(name, paths, root, sizes, notes="") -> DataInfo:
    return DataInfo(name=name, source="real", fingerprint=fingerprint(paths, root), sizes=sizes,
                    path=str(root / name), notes=notes)


# --------------------------------------------------------------------------- electricity

def load_electricity(data_dir_: str | None = None, synthetic: bool = False):
    """Electricity consumption (one client, 15-minute readings, z-scored, not kW).

    Returns ``(train, test, info)``: DataFrames with ``timestamp`` (datetime64) and
    ``consumption`` (float), sorted by time. Real data: 105,215 / 35,040 rows.
    """
    root = data_dir(data_dir_)
    files = [root / "electricity" / "electricity_train.csv", root / "electricity" / "electricity_test.csv"]
    if _use_synthetic("electricity", synthetic, root, files):
        return synthetic_electricity()
    frames = []
    for f in files:
        df = read_csv_checked(f, "electricity", ["timestamp", "consumption"], numeric=["consumption"])
        try:
            df["timestamp"] = pd.to_datetime(df["timestamp"], format="%Y-%m-%d %H:%M:%S")
        except (ValueError, TypeError) as e:
            raise _error("electricity", f, f"unparseable timestamp ({e})") from None
        frames.append(df.sort_values("timestamp", kind="stable").reset_index(drop=True))
    train, test = frames
    info = _info("electricity", files, root, {"train": len(train), "test": len(test)},
                 notes="values are z-scored consumption, not kW")
    return train, test, info


def synthetic_electricity(train_days: int = 60, test_days: int = 14, seed: int = 0):
    """Daily and weekly cycles plus noise at 15-minute resolution, z-scored like the real files."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2013-11-01 00:15:00", periods=(train_days + test_days) * 96, freq="15min")
    hours = (t.hour + t.minute / 60).to_numpy()
    dow = t.day_of_week.to_numpy()
    x = np.sin(2 * np.pi * (hours - 6) / 24) + 0.4 * (dow < 5) + 0.2 * rng.standard_normal(len(t))
    x = ((x - x.mean()) / x.std()).astype(np.float64)
    df = pd.DataFrame({"timestamp": t, "consumption": x})
    n_train = train_days * 96
    train, test = df.iloc[:n_train].reset_index(drop=True), df.iloc[n_train:].reset_index(drop=True)
    info = DataInfo("electricity", "synthetic", _synthetic_fingerprint("electricity", d=train_days, t=test_days, s=seed),
                    {"train": len(train), "test": len(test)}, notes="SYNTHETIC stand-in: daily/weekly sine + noise")
    return train, test, info


# --------------------------------------------------------------------------- water potability

def load_water_course(data_dir_: str | None = None, synthetic: bool = False):
    """The course's water potability split (min-max scaled 0..1 using train and test together).

    Returns ``(train, test, info)`` with the 9 feature columns and ``Potability`` (0/1).
    Real data: 1,508 / 503 rows.
    """
    root = data_dir(data_dir_)
    files = [root / "water_potability" / "water_train.csv", root / "water_potability" / "water_test.csv"]
    if _use_synthetic("water_potability", synthetic, root, files):
        df, _ = synthetic_water(n=200, scaled=True)
        train, test = df.iloc[:150].reset_index(drop=True), df.iloc[150:].reset_index(drop=True)
        return train, test, DataInfo("water_potability", "synthetic", _synthetic_fingerprint("water_course"),
                                     {"train": 150, "test": 50}, notes="SYNTHETIC stand-in")
    cols = WATER_FEATURES + ["Potability"]
    train, test = (read_csv_checked(f, "water_potability", cols, numeric=cols) for f in files)
    info = _info("water_potability", files, root, {"train": len(train), "test": len(test)},
                 notes="course files: min-max scaled with train and test together")
    return train, test, info


def load_water_raw(data_dir_: str | None = None, synthetic: bool = False):
    """The raw Kaggle ``water_potability.csv`` (3,276 rows; missing ph, Sulfate, Trihalomethanes)."""
    root = data_dir(data_dir_)
    f = root / "water_potability" / "water_potability.csv"
    if _use_synthetic("water_potability", synthetic, root, [f]):
        return synthetic_water(n=330, scaled=False)
    cols = WATER_FEATURES + ["Potability"]
    df = read_csv_checked(f, "water_potability", cols, numeric=cols, allow_missing=True)
    if df["Potability"].isna().any():
        raise _error("water_potability", f, "missing Potability label")
    return df, _info("water_potability", [f], root, {"all": len(df)}, notes="raw Kaggle file, with missing values")


def synthetic_water(n: int = 330, scaled: bool = False, seed: int = 0):
    """9 features, ~39% potable, a weak nonlinear signal; raw version has missing values."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, 9))
    logit = 3 * (X[:, 0] - 0.5) ** 2 * 4 - 1 + 1.5 * (X[:, 4] - 0.5) + 0.5 * rng.standard_normal(n)
    y = (logit > np.quantile(logit, 0.61)).astype(np.int64)
    if not scaled:
        X = X * np.array([14, 300, 60000, 13, 480, 750, 28, 124, 6.7])
        for j in (0, 4, 7):  # ph, Sulfate, Trihalomethanes have gaps in the real file
            X[rng.random(n) < 0.15, j] = np.nan
    df = pd.DataFrame(X, columns=WATER_FEATURES)
    df["Potability"] = y
    info = DataInfo("water_potability", "synthetic", _synthetic_fingerprint("water", n=n, s=scaled),
                    {"all": n}, notes="SYNTHETIC stand-in")
    return df, info


# --------------------------------------------------------------------------- zoo

def load_zoo(data_dir_: str | None = None, synthetic: bool = False):
    """UCI Zoo: 101 animals, 16 features, ``type`` 1..7. Returns ``(df, info)``."""
    root = data_dir(data_dir_)
    f = root / "zoo" / "zoo.data"
    if _use_synthetic("zoo", synthetic, root, [f]):
        return synthetic_zoo()
    df = read_csv_checked(f, "zoo", ZOO_COLUMNS, numeric=ZOO_COLUMNS[1:], header=None, names=ZOO_COLUMNS)
    return df, _info("zoo", [f], root, {"all": len(df)})


def load_animal_toy(data_dir_: str | None = None, synthetic: bool = False):
    """The course's 5-row ``animal_dataset.csv`` (3 types). Returns ``(df, info)``."""
    root = data_dir(data_dir_)
    f = root / "zoo" / "animal_dataset.csv"
    if _use_synthetic("zoo", synthetic, root, [f]):
        df = pd.DataFrame([[f"synthetic_{i}", i % 2, 1 - i % 2, 1, 0, i % 3 == 0, 2 + 2 * (i % 2), 1, i % 3]
                           for i in range(5)], columns=ANIMAL_TOY_COLUMNS)
        df["predator"] = df["predator"].astype(int)
        return df, DataInfo("zoo", "synthetic", _synthetic_fingerprint("animal_toy"), {"all": 5}, notes="SYNTHETIC stand-in")
    df = read_csv_checked(f, "zoo", ANIMAL_TOY_COLUMNS, numeric=ANIMAL_TOY_COLUMNS[1:])
    return df, _info("zoo", [f], root, {"all": len(df)}, notes="course toy animal_dataset.csv")


def synthetic_zoo(seed: int = 0):
    """101 rows with the real type counts (41/20/5/13/4/8/10); features from noisy type prototypes."""
    rng = np.random.default_rng(seed)
    counts = [41, 20, 5, 13, 4, 8, 10]
    types = np.repeat(np.arange(1, 8), counts)
    protos = rng.random((7, 16)) < 0.5
    feats = protos[types - 1] ^ (rng.random((101, 16)) < 0.1)
    feats = feats.astype(np.int64)
    feats[:, 12] = rng.choice([0, 2, 4, 6, 8], size=101)  # legs
    df = pd.DataFrame(feats, columns=ZOO_COLUMNS[1:-1])
    df.insert(0, "animal_name", [f"synthetic_{i}" for i in range(101)])
    df["type"] = types
    return df, DataInfo("zoo", "synthetic", _synthetic_fingerprint("zoo"), {"all": 101}, notes="SYNTHETIC stand-in")


# --------------------------------------------------------------------------- salaries

def load_salaries(data_dir_: str | None = None, synthetic: bool = False):
    """Data Science Salaries 2023 (3,755 rows, 11 columns). Returns ``(df, info)``."""
    root = data_dir(data_dir_)
    f = root / "ds_salaries" / "ds_salaries.csv"
    if _use_synthetic("ds_salaries", synthetic, root, [f]):
        return synthetic_salaries()
    df = read_csv_checked(f, "ds_salaries", SALARY_COLUMNS,
                          numeric=["work_year", "salary", "salary_in_usd", "remote_ratio"])
    return df, _info("ds_salaries", [f], root, {"all": len(df)})


def load_salaries_toy(data_dir_: str | None = None, synthetic: bool = False):
    """The course's 5-row normalised ``data_science_salaries.csv``. Returns ``(df, info)``."""
    root = data_dir(data_dir_)
    f = root / "ds_salaries" / "data_science_salaries.csv"
    if _use_synthetic("ds_salaries", synthetic, root, [f]):
        rng = np.random.default_rng(0)
        df = pd.DataFrame({"experience_level": rng.integers(0, 3, 5), "employment_type": 0,
                           "remote_ratio": rng.choice([0.0, 0.5, 1.0], 5), "company_size": rng.integers(0, 3, 5),
                           "salary_in_usd": rng.random(5).round(3)})
        return df, DataInfo("ds_salaries", "synthetic", _synthetic_fingerprint("salary_toy"), {"all": 5}, notes="SYNTHETIC stand-in")
    df = read_csv_checked(f, "ds_salaries", SALARY_TOY_COLUMNS, numeric=SALARY_TOY_COLUMNS)
    return df, _info("ds_salaries", [f], root, {"all": len(df)}, notes="course toy data_science_salaries.csv")


def synthetic_salaries(n: int = 400, seed: int = 0):
    """Same columns and categories as the real table; salary grows with experience and country."""
    rng = np.random.default_rng(seed)
    levels, sizes = np.array(["EN", "MI", "SE", "EX"]), np.array(["S", "M", "L"])
    countries = np.array(["US", "GB", "DE", "IN", "CA", "ES"])
    lvl = rng.choice(4, n, p=[0.1, 0.2, 0.6, 0.1])
    ctry = rng.choice(len(countries), n, p=[0.6, 0.1, 0.1, 0.08, 0.07, 0.05])
    usd = (50_000 + 35_000 * lvl) * np.array([1.5, 1.0, 1.0, 0.3, 1.2, 0.8])[ctry] * rng.lognormal(0, 0.25, n)
    df = pd.DataFrame({
        "work_year": rng.choice([2020, 2021, 2022, 2023], n), "experience_level": levels[lvl],
        "employment_type": rng.choice(["FT", "PT", "CT", "FL"], n, p=[0.97, 0.01, 0.01, 0.01]),
        "job_title": rng.choice(["Data Scientist", "Data Engineer", "ML Engineer"], n),
        "salary": usd.round(), "salary_currency": "USD", "salary_in_usd": usd.round().astype(np.int64),
        "employee_residence": countries[ctry], "remote_ratio": rng.choice([0, 50, 100], n),
        "company_location": countries[ctry], "company_size": rng.choice(sizes, n)})
    return df, DataInfo("ds_salaries", "synthetic", _synthetic_fingerprint("salaries", n=n), {"all": n}, notes="SYNTHETIC stand-in")


# --------------------------------------------------------------------------- images

def decode_images(paths: list[Path], size: int, mode: str, name: str) -> torch.Tensor:
    """Decode image files once into a uint8 tensor (N, C, size, size), resized with antialiasing.

    A file that cannot be decoded raises :class:`DataError` naming that file.
    """
    from PIL import Image, UnidentifiedImageError

    channels = {"L": 1, "RGB": 3}[mode]
    out = np.empty((len(paths), size, size, channels), dtype=np.uint8)
    for i, p in enumerate(paths):  # decoding is per file by nature; done once, then cached
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR, reducing_gap=None)
                out[i] = np.asarray(im).reshape(size, size, channels)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise _error(name, Path(p), f"cannot decode image file {p} ({type(e).__name__}: {e})") from None
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def cached_tensor(key: str, build):
    """Load ``cache_dir()/key.pt`` (``weights_only=True``) or build it with ``build()`` and save it atomically."""
    path = cache_dir() / f"{key}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a stale or damaged cache is rebuilt, never trusted
            path.unlink(missing_ok=True)
    value = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(value, tmp)
        os.replace(tmp, path)
    except OSError as e:  # a read-only checkout still works, just without the cache
        warnings.warn(f"could not write image cache {path}: {e}")
    return value


def _list_class_folders(split_dir: Path, name: str) -> tuple[list[str], list[Path], list[int]]:
    if not split_dir.is_dir():
        raise _error(name, split_dir, "folder not found")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise _error(name, split_dir, "no class folders inside")
    paths, labels = [], []
    for k, c in enumerate(classes):
        files = sorted(p for p in (split_dir / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise _error(name, split_dir / c, f"class folder {c!r} has no image files")
        paths += files
        labels += [k] * len(files)
    return classes, paths, labels


def load_clouds(data_dir_: str | None = None, synthetic: bool = False, size: int = 64):
    """Clouds: ``clouds_train`` (474) and ``clouds_test`` (486) JPGs in 7 class folders.

    Returns ``(train, test, info)`` where each split is an :class:`ImageSet` decoded once to
    uint8 RGB at ``size``x``size`` (cached under ``data/cache``); ``paths`` and
    ``file_sha256`` are kept for duplicate checks. Classes are sorted folder names, as in
    torchvision's ``ImageFolder``.
    """
    root = data_dir(data_dir_)
    dirs = [root / "clouds" / "clouds_train", root / "clouds" / "clouds_test"]
    if _use_synthetic("clouds", synthetic, root, dirs):
        return synthetic_clouds(size=size)
    splits = [_list_class_folders(d, "clouds") for d in dirs]
    if splits[0][0] != splits[1][0]:
        raise _error("clouds", dirs[1], f"test classes {splits[1][0]} differ from train classes {splits[0][0]}")
    hashes = [[sha256_file(p) for p in s[1]] for s in splits]
    fp = fingerprint(splits[0][1] + splits[1][1], root, hashes[0] + hashes[1])
    sets = []
    for (classes, paths, labels), hs, split in zip(splits, hashes, ("train", "test")):
        images = cached_tensor(f"clouds-{split}-{fp[:16]}-{size}", lambda: decode_images(paths, size, "RGB", "clouds"))
        sets.append(ImageSet(images, torch.tensor(labels), classes, [str(p) for p in paths], hs))
    info = DataInfo("clouds", "real", fp, {"train": len(sets[0]), "test": len(sets[1])}, str(root / "clouds"))
    return sets[0], sets[1], info


def clouds_image_folder(split: str = "train", data_dir_: str | None = None, transform=None):
    """The course's way in: a torchvision ``ImageFolder`` over ``clouds_<split>``."""
    from torchvision.datasets import ImageFolder

    d = data_dir(data_dir_) / "clouds" / f"clouds_{split}"
    _list_class_folders(d, "clouds")  # clear error first
    return ImageFolder(str(d), transform=transform)


CLOUD_CLASSES = ["cirriform clouds", "clear sky", "cumulonimbus clouds", "cumulus clouds",
                 "high cumuliform clouds", "stratiform clouds", "stratocumulus clouds"]


def synthetic_clouds(size: int = 64, per_class: tuple[int, int] = (10, 10), seed: int = 0):
    """7 classes, each a colour/texture family with noise; 10 train and 10 test images per class."""
    g = torch.Generator().manual_seed(seed)
    sets = []
    for split, n in zip(("train", "test"), per_class):
        labels = torch.arange(7).repeat_interleave(n)
        base = torch.linspace(40, 220, 7)[labels].view(-1, 1, 1, 1)
        tint = torch.stack([torch.ones(7), torch.linspace(0.6, 1.0, 7), torch.linspace(1.0, 0.5, 7)], 1)[labels]
        yy = torch.linspace(0, 1, size).view(1, 1, size, 1)
        stripes = 30 * torch.sin(yy * (labels.view(-1, 1, 1, 1) + 1) * 6.28)
        noise = 25 * torch.randn(len(labels), 3, size, size, generator=g)
        img = (base * tint.view(-1, 3, 1, 1) + stripes + noise).clamp(0, 255).to(torch.uint8)
        sets.append(ImageSet(img, labels, list(CLOUD_CLASSES), [f"synthetic/{split}/{i}" for i in range(len(labels))],
                             [f"synthetic-{split}-{i}" for i in range(len(labels))]))
    info = DataInfo("clouds", "synthetic", _synthetic_fingerprint("clouds", size=size, n=per_class),
                    {"train": len(sets[0]), "test": len(sets[1])}, notes="SYNTHETIC stand-in")
    return sets[0], sets[1], info


@dataclass
class OmniglotSet:
    """Omniglot background set decoded once: ``images`` uint8 (N, 1, size, size)."""
    images: torch.Tensor
    alphabet: torch.Tensor        # (N,) alphabet index 0..29
    character: torch.Tensor       # (N,) global character index 0..963
    alphabets: list
    characters: list              # "Alphabet/characterNN" for each global index
    relpaths: list                # "Alphabet/characterNN/file.png", as in the course split lists

    def __len__(self) -> int:
        return len(self.character)


def _omniglot_root(root: Path) -> Path:
    for cand in (root / "omniglot" / "images_background", root / "omniglot-py" / "images_background",
                 root / "omniglot" / "omniglot-py" / "images_background"):
        if cand.is_dir():
            return cand
    return root / "omniglot" / "images_background"


def load_omniglot(data_dir_: str | None = None, synthetic: bool = False, size: int = 64):
    """Omniglot ``images_background``: 30 alphabets, 964 characters, 19,280 105x105 PNGs.

    Accepts ``DATA_DIR/omniglot/images_background`` or torchvision's
    ``DATA_DIR/omniglot-py/images_background``. Returns ``(OmniglotSet, info)`` with the
    images decoded once to uint8 grayscale at ``size``x``size`` (cached under ``data/cache``).
    """
    root = data_dir(data_dir_)
    base = _omniglot_root(root)
    if _use_synthetic("omniglot", synthetic, root, [base]):
        return synthetic_omniglot(size=size)
    alphabets = sorted(d.name for d in base.iterdir() if d.is_dir())
    if not alphabets:
        raise _error("omniglot", base, "no alphabet folders inside")
    paths, alpha_idx, char_idx, characters = [], [], [], []
    for a, alpha in enumerate(alphabets):
        for char_dir in sorted(d for d in (base / alpha).iterdir() if d.is_dir()):
            files = sorted(p for p in char_dir.iterdir() if p.suffix.lower() == ".png")
            if not files:
                raise _error("omniglot", char_dir, "character folder has no PNG files")
            characters.append(f"{alpha}/{char_dir.name}")
            paths += files
            alpha_idx += [a] * len(files)
            char_idx += [len(characters) - 1] * len(files)
    fp = fingerprint(paths, base)
    images = cached_tensor(f"omniglot-{fp[:16]}-{size}", lambda: decode_images(paths, size, "L", "omniglot"))
    rel = [str(p.relative_to(base)) for p in paths]
    ds = OmniglotSet(images, torch.tensor(alpha_idx), torch.tensor(char_idx), alphabets, characters, rel)
    info = DataInfo("omniglot", "real", fp, {"images": len(ds), "characters": len(characters),
                                             "alphabets": len(alphabets)}, str(base))
    return ds, info


def load_omniglot_course_split(data_dir_: str | None = None) -> tuple[list[str], list[str]]:
    """The course's train/test file lists (relative paths; they overlap: 7,269 files are in both)."""
    root = data_dir(data_dir_)
    out = []
    for split in ("train", "test"):
        f = root / "omniglot" / "course_split" / f"omniglot_{split}.txt"
        if not f.exists():
            raise _error("omniglot", f, "course split list not found")
        out.append([line.strip() for line in f.read_text().splitlines() if line.strip()])
    return out[0], out[1]


def synthetic_omniglot(size: int = 64, drawings: int = 4, seed: int = 0):
    """30 alphabets, 964 characters, ``drawings`` noisy copies of a random stroke pattern each."""
    g = torch.Generator().manual_seed(seed)
    n_chars = 964
    alpha_of_char = torch.from_numpy(np.concatenate(
        [np.full(len(c), a) for a, c in enumerate(np.array_split(np.arange(n_chars), 30))]))
    low = (torch.rand(n_chars, 1, 8, 8, generator=g) < 0.25).float()
    protos = torch.nn.functional.interpolate(low, size=(size, size), mode="nearest")
    char = torch.arange(n_chars).repeat_interleave(drawings)
    flips = torch.rand(len(char), 1, size, size, generator=g) < 0.05
    images = ((1 - protos[char]).bool() ^ flips).to(torch.uint8) * 255
    alphabets = [f"synthetic_alphabet_{a:02d}" for a in range(30)]
    characters = [f"{alphabets[alpha_of_char[c]]}/character{c:03d}" for c in range(n_chars)]
    rel = [f"{characters[c]}/{c:03d}_{k:02d}.png" for c in range(n_chars) for k in range(drawings)]
    ds = OmniglotSet(images, alpha_of_char[char], char, alphabets, characters, rel)
    info = DataInfo("omniglot", "synthetic", _synthetic_fingerprint("omniglot", size=size, d=drawings),
                    {"images": len(ds), "characters": n_chars, "alphabets": 30}, notes="SYNTHETIC stand-in")
    return ds, info


# --------------------------------------------------------------------------- status (run_all.sh)

DATASET_CHECKS = {
    "omniglot": lambda r: _omniglot_root(r).is_dir(),
    "clouds": lambda r: (r / "clouds" / "clouds_train").is_dir() and (r / "clouds" / "clouds_test").is_dir(),
    "electricity": lambda r: (r / "electricity" / "electricity_train.csv").is_file(),
    "water_potability": lambda r: (r / "water_potability" / "water_potability.csv").is_file(),
    "zoo": lambda r: (r / "zoo" / "zoo.data").is_file(),
    "ds_salaries": lambda r: (r / "ds_salaries" / "ds_salaries.csv").is_file(),
}


def missing_datasets(data_dir_: str | None = None) -> list[str]:
    """Names of the datasets not found under the data root."""
    root = data_dir(data_dir_)
    return [name for name, ok in DATASET_CHECKS.items() if not ok(root)]


if __name__ == "__main__":
    # `python -m common.data` prints which datasets are present; exit 1 if any is missing.
    # `--download` first fetches the missing ones (common/download.py); exit 2 if that fails.
    if "--download" in sys.argv[1:]:
        from common.download import download
        if download() != 0:
            sys.exit(2)
    root = data_dir()
    missing = missing_datasets()
    for name in DATASET_CHECKS:
        state = "MISSING" if name in missing else "ok"
        print(f"{name:18s} {state:8s} {SOURCES[name][1] if name in missing else ''}")
    print(f"DATA_DIR = {root}")
    sys.exit(1 if missing else 0)
