"""Fetch the real datasets into ``DATA_DIR``: pinned sources, checked checksums, progress, safe on failure.

``python -m common.data --download`` (or ``bash run_all.sh --get-data``) fetches every dataset part that is
missing under ``DATA_DIR`` from :data:`SOURCES`, verifies every file's sha256 against the checksums this
project ships, lays the files out as the loaders in :mod:`common.data` expect, prints the bytes fetched and
then ``python -m common.data``'s table. ``python -m common.download --dry-run`` lists what it would fetch,
from where, without touching the network.

Library: `pooch <https://www.fatiando.org/pooch/>`_ (pinned in requirements.txt). It streams each file to a
temporary name next to its destination, checks the hash (``sha256:``, or ``md5:`` for the Omniglot archive,
whose md5 is torchvision's), renames only on a match and deletes the temporary file otherwise, retries a
failed or cut-short transfer (``retry_if_failed``: a broken download is redone from the start, not resumed
byte-wise), takes timeouts and draws a tqdm progress bar with sizes. torchvision's helpers only know md5 and
have no timeout, so pooch keeps this module to the source table, the layout and the messages.

Layout of the sources: every file is addressed as ``<base>/<repository>/<commit>/<path>``, with
``<base> = https://raw.githubusercontent.com`` (GitHub's raw files, which are laid out exactly so). The
environment variable ``DATA_MIRROR=URL`` replaces that base for every file, Omniglot's archive included
(``$DATA_MIRROR/brendenlake/omniglot/057f034baf2ecb8530bc5710e5a23584d2a519cc/python/images_background.zip``).
Only http(s) mirrors are accepted.

Speed: Omniglot's 19,280 PNGs come as the official ``images_background.zip`` (one request); the 960 cloud
JPGs have no archive at the source, so they are fetched in parallel by a bounded thread pool
(:data:`WORKERS`). Nothing clones a repository.

Safety: files are staged under ``DATA_DIR/.download/`` and each dataset part (a file, or a whole folder
such as ``clouds/clouds_train``) is moved into place with one rename only when every file of it is
verified, so the loaders never see half a dataset. Archive members are extracted only if they are listed in
the shipped manifest (fixed, checked relative names: nothing can land outside the target) and each is
hash-checked. Nothing downloaded is ever executed or unpickled. Any failure (checksum mismatch, HTTP error,
timeout, no network) stops the run with one message naming the file and its URL and exit status 2; verified
files are kept (in place, or in ``DATA_DIR/.download/`` for a part not yet complete, where the next run
picks them up), and no unverified byte is left behind. Parts already present are not fetched again; their
files are checked and a difference is reported, never overwritten.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import re
import shutil
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from common.data import _omniglot_root, data_dir, sha256_file

RAW_BASE = "https://raw.githubusercontent.com"   # <base>/<repository>/<commit>/<path>; DATA_MIRROR replaces it
MANIFEST_DIR = Path(__file__).resolve().parent / "data_manifests"
STAGING = ".download"          # under DATA_DIR: verified files of parts not yet complete
WORKERS = 8                    # parallel transfers for a folder of many small files
RETRIES = 2                    # a failed or cut-short transfer is redone up to this many times
TIMEOUT = (15, 60)             # seconds to connect, seconds without a byte received
MAX_MEMBER = 1 << 20           # largest archive member accepted (Omniglot PNGs are < 1 kB)


@dataclass(frozen=True)
class Source:
    """One part of a dataset: what it becomes under ``DATA_DIR/<dataset>/<target>`` and where it comes from.

    kind ``file``: one file, ``sha256`` is its checksum. ``tree``: a folder, one file per line of the manifest
    (``sha256  <target>/<relative path>``) fetched from ``<path>/<relative path>``; ``sha256`` is the
    manifest's. ``zip``: a folder extracted from the archive at ``path`` (checked with ``archive_md5``), each
    member checked against the manifest. ``shipped``: a file made from ``manifest`` in common/data_manifests
    (no network); ``repo``/``commit``/``path`` say where its content was read.
    """
    dataset: str
    target: str
    kind: str
    repo: str
    commit: str
    path: str
    sha256: str
    size: int                 # bytes fetched (approximate for the zip: its exact size is not known here)
    manifest: str = ""
    archive_md5: str = ""


DL_25_26 = ("SimeonHristov99/DL_25-26", "e6f587de19c809664165fd5be97f9fe874596d9c")
ML_24_25 = ("SimeonHristov99/ML_24-25", "e49f4d73b173dc9e42af30e40da5fa0d890378c7")
OMNIGLOT = ("brendenlake/omniglot", "057f034baf2ecb8530bc5710e5a23584d2a519cc")
SSAINI = ("ssaini9/deep_learning", "854bf30a58984f1608408c422ec15c0dafe3a532")

# THE table of real sources: repository, commit and path as named by ../shared/data/*/PROVENANCE.md, the
# checksums from its tables and MANIFEST.sha256 files. Never contacted by the tests or CI.
SOURCES: list[Source] = [
    # Omniglot: the official archive (torchvision.datasets.Omniglot's md5; its sha256 is not known here,
    # shared/ has only the extracted files); every PNG is checked against the 19,280-line manifest.
    Source("omniglot", "images_background", "zip", *OMNIGLOT, "python/images_background.zip",
           "deaa02f758afda524b3a045c7af40311f2d9ded3e2a39f715ece8470d474bc6a", 9_400_000,
           manifest="omniglot.sha256.gz", archive_md5="68d2efa1b9178cc56df9314c21c6e718"),
    # The course's split is the listing of its two (overlapping) folders in DL_25-26: shipped as file lists.
    Source("omniglot", "course_split/omniglot_train.txt", "shipped", *DL_25_26, "DATA/omniglot_train",
           "6cb162ff57aecf1f949745e014fe147bc6dd7cf6cb29cbdefc9471bf3acde3e8", 0, manifest="omniglot_train.txt.gz"),
    Source("omniglot", "course_split/omniglot_test.txt", "shipped", *DL_25_26, "DATA/omniglot_test",
           "eb8944669f742beb6f80264a58de6e1340a119f127eaa115f7b52bd1ac4ad3d0", 0, manifest="omniglot_test.txt.gz"),
    # Clouds: the commit read in ML_24-25 (the same git tree is DATA/clouds in DL_25-26 at its commit).
    Source("clouds", "clouds_train", "tree", *ML_24_25, "DATA/clouds/clouds_train",
           "953a411c5fed57bd370d62d3f574151887e32f2b9dd075d80409e5405c065251", 2_678_637, manifest="clouds.sha256"),
    Source("clouds", "clouds_test", "tree", *ML_24_25, "DATA/clouds/clouds_test",
           "953a411c5fed57bd370d62d3f574151887e32f2b9dd075d80409e5405c065251", 2_661_390, manifest="clouds.sha256"),
    Source("electricity", "electricity_train.csv", "file", *ML_24_25, "DATA/electricity_consumption/electricity_train.csv",
           "d0d462efe33007d90f7fb5d84466ad12e45a6ef0adb07371c764b77eca357230", 4_142_532),
    Source("electricity", "electricity_test.csv", "file", *ML_24_25, "DATA/electricity_consumption/electricity_test.csv",
           "948d6f836e5e312a67243299cda71dab2595f7f974856c7494109fcf80810673", 1_390_875),
    Source("water_potability", "water_potability.csv", "file", "ALGOREX-PH/Water-Potability-Prediction",
           "2905b1fbb0176e7c4507a49e87144959bd70e732", "water_potability.csv",
           "904004bde729bfe3d2e195f46343bceead09e32a0eb95bb8184e7e20e029b2bf", 525_187),
    Source("water_potability", "water_train.csv", "file", *ML_24_25, "DATA/water_train.csv",
           "7c96a67f86fe1df048c1f0d7110d9ea122f5d10701fbe55e4249b550b2dc6fd1", 245_627),
    Source("water_potability", "water_test.csv", "file", *ML_24_25, "DATA/water_test.csv",
           "2b4f706cc8ab47ed5da7f108c38b43db55ca3e24eca51309e85c5360002e7b39", 82_086),
    Source("zoo", "zoo.data", "file", "hifo/Assignment4", "2d34bd8c9f38fd57efcb8935e15e6e206b2f2c6b", "zoo.data",
           "cddc71c26ab9bc82795b8f4ff114cade41885d92720c6af29ffb69bcf73f0315", 4_126),
    Source("zoo", "zoo.names", "file", "dantecomedia/zoo_animal_classification",
           "af2cbc2e25fb1ab0c5cf25ad947704f41b332ca6", "zoo.names",
           "db3dd334beb643c9e14b75603360ea5edcac90a6ac19302e1896039f0c20d428", 2_587),
    Source("zoo", "animal_dataset.csv", "file", *SSAINI, "animal_dataset.csv",
           "f5b8090930056ebc71edc52673d9b7875837b9d7d8947550ed74221d5f8cf908", 169),
    Source("ds_salaries", "ds_salaries.csv", "file", *DL_25_26, "DATA/ds_salaries.csv",
           "b156e54135634169cedc91c685851450d890a05f0753a2a655895e2475e946e6", 210_076),
    Source("ds_salaries", "data_science_salaries.csv", "file", *SSAINI, "data_science_salaries.csv",
           "97a1f7068eea58ac9124725c823a9cb314526d14f1203f676460c7396aae49a4", 152),
]


class DownloadError(RuntimeError):
    """One file could not be fetched or verified: the message names the file, its source and why."""

    def __init__(self, name: str, source: str, why: str):
        super().__init__(f"could not get {name}\n  from: {source}\n  why:  {why}")


def base_url() -> str:
    """``$DATA_MIRROR`` (an http(s) URL laid out as ``<repository>/<commit>/<path>``), else GitHub's raw files."""
    mirror = os.environ.get("DATA_MIRROR", "").strip()
    if mirror and not re.match(r"https?://", mirror):
        raise DownloadError("any file", f"DATA_MIRROR={mirror}", "DATA_MIRROR must be an http:// or https:// URL")
    return (mirror or RAW_BASE).rstrip("/")


def url_of(src: Source, rel: str = "") -> str:
    """The URL of ``src`` (of its file ``rel``, relative to ``target``, for a tree)."""
    path = src.path + (f"/{rel}" if rel else "")
    return f"{base_url()}/{src.repo}/{src.commit}/{quote(path, safe='/')}"


def _safe_rel(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and "\\" not in rel and all(p not in ("", ".", "..") for p in parts)


@lru_cache(maxsize=None)
def _manifest_bytes(name: str, sha256: str) -> bytes:
    """A shipped manifest (gunzipped), checked against the sha256 the table pins for it."""
    raw = (MANIFEST_DIR / name).read_bytes()
    data = gzip.decompress(raw) if name.endswith(".gz") else raw
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DownloadError(f"the manifest {name}", str(MANIFEST_DIR), "its sha256 differs from the one pinned in "
                            "common/download.py (damaged checkout?)")
    return data


def manifest(src: Source) -> list[tuple[str, str]]:
    """``(path relative to DATA_DIR/<dataset>, sha256)`` of every file of a tree or zip part."""
    out = []
    for line in _manifest_bytes(src.manifest, src.sha256).decode().splitlines():
        digest, rel = line.split("  ", 1)
        if rel.startswith(src.target + "/"):
            if not (_safe_rel(rel) and re.fullmatch(r"[0-9a-f]{64}", digest)):
                raise DownloadError(rel, src.manifest, "malformed manifest line")
            out.append((rel, digest))
    return out


class _Stats:
    def __init__(self):
        self.lock, self.bytes, self.files = threading.Lock(), 0, 0

    def add(self, n: int):
        with self.lock:
            self.bytes, self.files = self.bytes + n, self.files + 1


class _Downloader:
    """pooch's HTTP downloader (timeouts, tqdm bar), counting the bytes it fetched."""

    def __init__(self, stats: _Stats, progressbar=False, bar=None):
        import pooch
        self.http = pooch.HTTPDownloader(progressbar=progressbar, timeout=TIMEOUT, chunk_size=1 << 16)
        self.stats, self.bar = stats, bar

    def __call__(self, url, output_file, pooch_, check_only=False):
        self.http(url, output_file, pooch_)
        n = os.path.getsize(output_file)
        self.stats.add(n)
        if self.bar is not None:
            self.bar.update(n)


def _bar(**kw):
    """A tqdm bar of bytes without tqdm's monitor thread: a thread left running in this process would make every
    later fork (common.parallel's workers) the fork of a multi-threaded process, which can deadlock the child."""
    from tqdm import tqdm

    class Bar(tqdm):
        monitor_interval = 0
    return Bar(unit="B", unit_scale=True, ncols=79, **kw)


def _why(e: BaseException) -> str:
    import requests
    if isinstance(e, requests.HTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code} {e.response.reason}"
    if isinstance(e, requests.Timeout):
        return f"timed out (no answer within {TIMEOUT} s)"
    if isinstance(e, requests.ConnectionError):
        m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(e))
        return f"cannot connect ({m.group(1) if m else type(e).__name__}): no network, or the server is down"
    if isinstance(e, requests.RequestException):
        return f"the transfer failed ({type(e).__name__}: the connection was cut short?)"
    m = re.search(r"expected (\S+) but got (\S+?)\.", str(e))
    if isinstance(e, ValueError) and m:
        return f"checksum mismatch: expected {m.group(1)}, got {m.group(2)} (the download was deleted)"
    return f"{type(e).__name__}: {e}"


def _fetch(stage: Path, files: dict[str, tuple[str, str]], downloader) -> Callable[[str], Path]:
    """A function fetching one staged file (name relative to ``stage``) with pooch; errors become DownloadError."""
    import pooch
    p = pooch.create(path=stage, base_url="", registry={k: h for k, (h, _) in files.items()},
                     urls={k: u for k, (_, u) in files.items()}, retry_if_failed=RETRIES)
    for k in files:
        (stage / k).parent.mkdir(parents=True, exist_ok=True)   # pooch would race creating them in threads

    def fetch(name: str) -> Path:
        try:
            return Path(p.fetch(name, downloader=downloader))
        except Exception as e:
            raise DownloadError(f"{stage.name}/{name}", files[name][1], _why(e)) from None
    return fetch


def _existing(root: Path, src: Source) -> Path | None:
    if (src.dataset, src.target) == ("omniglot", "images_background"):
        p = _omniglot_root(root)                 # torchvision's omniglot-py layout counts as present
    else:
        p = root / src.dataset / src.target
    return p if p.exists() else None


def _check_present(src: Source, path: Path) -> list[str]:
    """Problems of a part already in place (missing files, sha256 differences); empty when it is intact."""
    if src.kind in ("file", "shipped"):
        return [] if sha256_file(path) == src.sha256 else [f"{path} differs from the pinned copy (sha256)"]
    problems = []
    for rel, digest in manifest(src):
        f = path.parent / rel
        if not f.is_file():
            problems.append(f"{f} is missing")
        elif sha256_file(f) != digest:
            problems.append(f"{f} differs from the pinned copy (sha256)")
    return problems


def _tidy(staging: Path, keep: set[Path]):
    """Remove from the staging folder everything but verified-or-reusable files (a killed run's temporaries)."""
    if not staging.exists():
        return
    for f in sorted(staging.rglob("*"), reverse=True):
        if f.is_dir():
            if not any(f.iterdir()):
                f.rmdir()
        elif f not in keep:
            f.unlink()


def _staged_files(src: Source, stage: Path) -> list[Path]:
    if src.kind == "tree":
        return [stage / rel for rel, _ in manifest(src)]
    if src.kind == "zip":
        return [stage / Path(src.path).name]
    return [stage / src.target] if src.kind == "file" else []


def _get(src: Source, root: Path, stage: Path, stats: _Stats) -> None:
    """Fetch and verify one part into ``stage`` (= DATA_DIR/.download/<dataset>), then move it into place."""
    dest = root / src.dataset / src.target
    if src.kind == "file":
        print(f"-> {src.dataset}/{src.target} ({src.size / 1e6:.2f} MB) from {url_of(src)}", flush=True)
        downloader = _Downloader(stats, _bar(total=src.size))
        _fetch(stage, {src.target: ("sha256:" + src.sha256, url_of(src))}, downloader)(src.target)
        built = stage / src.target
    elif src.kind == "shipped":
        data = _manifest_bytes(src.manifest, src.sha256)   # checked against the pinned sha256
        built = stage / src.target
        built.parent.mkdir(parents=True, exist_ok=True)
        built.write_bytes(data)
        print(f"-> {src.dataset}/{src.target} written from common/data_manifests/{src.manifest} "
              f"(the listing of {src.repo}@{src.commit[:8]}:{src.path})", flush=True)
    elif src.kind == "tree":
        files = manifest(src)
        print(f"-> {src.dataset}/{src.target}: {len(files)} files ({src.size / 1e6:.2f} MB) from "
              f"{url_of(src)}/... ({WORKERS} at a time)", flush=True)
        with _bar(total=src.size, desc=f"{src.dataset}/{src.target}") as bar:
            fetch = _fetch(stage, {rel: ("sha256:" + h, url_of(src, rel[len(src.target) + 1:])) for rel, h in files},
                           _Downloader(stats, bar=bar))
            with ThreadPoolExecutor(WORKERS) as pool:
                futures = [pool.submit(fetch, rel) for rel, _ in files]
                try:
                    for f in as_completed(futures):
                        f.result()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        built = stage / src.target
    elif src.kind == "zip":
        name = Path(src.path).name
        print(f"-> {src.dataset}/{src.target} from the archive {url_of(src)} (~{src.size / 1e6:.1f} MB)", flush=True)
        downloader = _Downloader(stats, _bar(total=src.size))
        archive = _fetch(stage, {name: ("md5:" + src.archive_md5, url_of(src))}, downloader)(name)
        built = _extract(src, archive, stage)
    else:
        raise ValueError(f"unknown source kind {src.kind!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(built, dest)


def _extract(src: Source, archive: Path, stage: Path) -> Path:
    """Extract exactly the manifest's files from ``archive`` into ``stage``, checking each one's sha256."""
    out = stage / src.target
    shutil.rmtree(out, ignore_errors=True)
    files = manifest(src)
    try:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for rel, digest in files:        # fixed, checked relative names: nothing lands outside `stage`
                where = f"{src.dataset}/{rel} (member of {archive.name})"
                if rel not in names:
                    raise DownloadError(where, url_of(src), "not in the archive")
                info = zf.getinfo(rel)
                if info.file_size > MAX_MEMBER:
                    raise DownloadError(where, url_of(src), f"member too large ({info.file_size} bytes)")
                data = zf.read(info)
                got = hashlib.sha256(data).hexdigest()
                if got != digest:
                    raise DownloadError(where, url_of(src), f"checksum mismatch: expected sha256:{digest}, got {got}")
                f = stage / rel
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(data)
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"{src.dataset}/{archive.name}", url_of(src), f"cannot read the archive ({e})") from None
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    extra = len([n for n in names if not n.endswith("/")]) - len(files)
    print(f"   {len(files)} files extracted and verified" + (f"; {extra} other archive members ignored" if extra else ""))
    archive.unlink()
    return out


def download(data_dir_: str | None = None, sources: list[Source] | None = None) -> int:
    """Fetch every missing part of :data:`SOURCES` into the data root. 0 on success, 2 on any failure."""
    import pooch
    pooch.get_logger().setLevel(logging.WARNING)
    sources = SOURCES if sources is None else sources
    root = data_dir(data_dir_)
    staging = root / STAGING
    stats, t0 = _Stats(), time.time()
    try:
        base = base_url()
        todo, warnings = [], []
        for src in sources:
            where = _existing(root, src)
            if where is None:
                todo.append(src)
            else:
                warnings += _check_present(src, where)
        for w in warnings[:10]:
            print(f"WARNING: {w}; left as it is (delete it and run again to fetch the pinned copy)", file=sys.stderr)
        if len(warnings) > 10:
            print(f"WARNING: ... and {len(warnings) - 10} more such files", file=sys.stderr)
        if not todo:
            print(f"All datasets are already in {root}; nothing to fetch.")
            shutil.rmtree(staging, ignore_errors=True)
            return 0
        print(f"Fetching {len(todo)} missing part(s), about {sum(s.size for s in todo) / 1e6:.1f} MB, into {root} "
              f"from {base} (pinned commits; every file checked against its sha256)", flush=True)
        _tidy(staging, {f for s in todo for f in _staged_files(s, staging / s.dataset)})
        for src in todo:
            _get(src, root, staging / src.dataset, stats)
    except DownloadError as e:
        print(f"ERROR: {e}\n  Verified files are kept ({stats.bytes / 1e6:.1f} MB fetched in this run); run the same "
              f"command again to continue.", file=sys.stderr)
        try:
            _tidy(staging, {f for s in sources for f in _staged_files(s, staging / s.dataset)})
        except DownloadError:   # a damaged manifest: keep nothing staged
            shutil.rmtree(staging, ignore_errors=True)
        return 2
    except OSError as e:
        print(f"ERROR: cannot write the data under {root}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted; verified files are kept, run the same command again to continue.", file=sys.stderr)
        return 2
    shutil.rmtree(staging, ignore_errors=True)
    print(f"Fetched {stats.bytes / 1e6:.1f} MB ({stats.bytes:,} bytes, {stats.files} file(s)) in "
          f"{time.time() - t0:.0f} s; every file verified.", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.download", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="list the sources and URLs; fetch nothing")
    a = ap.parse_args(argv)
    if a.dry_run:
        root = data_dir()
        for src in SOURCES:
            state = "present" if _existing(root, src) else "MISSING"
            where = f"common/data_manifests/{src.manifest}" if src.kind == "shipped" else url_of(src)
            print(f"{state:8s} {src.dataset + '/' + src.target:45s} {src.kind:8s} {where}")
        print(f"total if all missing: about {sum(s.size for s in SOURCES) / 1e6:.1f} MB; DATA_DIR = {root}")
        return 0
    return download()


if __name__ == "__main__":
    sys.exit(main())
