"""``python -m common.data --download`` against a loopback HTTP server: never the real sources.

A small data tree (two CSVs, a folder of tiny PNGs, a zip of tiny PNGs, a shipped list) is built in
``tmp_path`` with its own manifest and served from 127.0.0.1 through ``DATA_MIRROR``; the real download path
(pooch, staging, checks, layout) runs against it: success, a transfer cut short and redone, a second run that
continues from the verified files, checksum mismatch, HTTP 404, timeout, server gone, a bad archive member.
After every run, DATA_DIR holds only verified files. Sockets to anything but the loopback interface fail
the test (in-process), and the ``run_all.sh --get-data`` run gets a dead loopback proxy for anything else.
"""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import re
import socket
import subprocess
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import unquote

import pytest

from common import download as dl
from common.data import data_dir, missing_datasets

REPO = Path(__file__).resolve().parent.parent
SHA = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any in-process connection to an address other than the loopback interface."""
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"a test tried to reach {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(dl, "TIMEOUT", (2, 1.0))
    monkeypatch.setattr(dl, "RETRIES", 1)       # one redo (pooch waits 1 s before it)
    dl._manifest_bytes.cache_clear()


class Server:
    """Serves ``routes`` (URL path -> bytes) on 127.0.0.1; ``cut`` paths get half their body once,
    ``slow`` paths answer after 1.5 s; every request path is logged."""

    def __init__(self):
        self.routes: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.slow: set[str] = set()
        self.log: list[str] = []
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10

            def do_GET(self):
                path = unquote(self.path)
                srv.log.append(path)
                body = srv.routes.get(path)
                if body is None:
                    self.send_error(404)
                    return
                if path in srv.slow:
                    time.sleep(1.5)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in srv.cut:
                    srv.cut.discard(path)
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def serve(self, src: dl.Source, body: bytes, rel: str = ""):
        path = src.path + (f"/{rel}" if rel else "")
        self.routes[f"/mirror/{src.repo}/{src.commit}/{path}"] = body


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _png(seed: int) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("L", (4, 4), color=seed * 40).save(buf, format="PNG")
    return buf.getvalue()


class Tiny:
    """A small copy of the data layout: its sources table, expected files and a loopback mirror of it."""

    def __init__(self, tmp: Path, server: Server, monkeypatch):
        mdir = tmp / "manifests"
        mdir.mkdir()
        monkeypatch.setattr(dl, "MANIFEST_DIR", mdir)
        self.expected: dict[str, bytes] = {}          # path under DATA_DIR -> content
        csv_a, csv_b = b"x,y\n1,2\n3,4\n" * 50, b"name,type\nsparrow,0\n"
        pics = {f"pics_train/class {c}/{i:02d}.png": _png(3 * c + i) for c in (1, 2) for i in range(3)}
        glyphs = {f"images_background/Alpha/character0{c}/{c}_{i}.png": _png(c + i) for c in (1, 2) for i in range(2)}
        split = b"".join(k.split("/", 1)[1].encode() + b"\n" for k in list(glyphs)[:3])

        def manifest(name, files):
            text = "".join(f"{SHA(b)}  {rel}\n" for rel, b in sorted(files.items())).encode()
            (mdir / name).write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
            return SHA(text)

        (mdir / "split.txt.gz").write_bytes(gzip.compress(split))
        zbuf = io.BytesIO()
        with zipfile.ZipFile(zbuf, "w") as zf:
            for rel, b in glyphs.items():
                zf.writestr(rel, b)
            zf.writestr("../escaped.png", b"must never be written")      # not in the manifest: ignored
            zf.writestr("images_background/../../escaped2.png", b"nor this")
        self.zip = zbuf.getvalue()
        self.sources = [
            dl.Source("alpha", "a.csv", "file", "owner/repo-one", COMMIT, "data/a.csv", SHA(csv_a), len(csv_a)),
            dl.Source("alpha", "b.csv", "file", "owner/repo-two", COMMIT, "b.csv", SHA(csv_b), len(csv_b)),
            dl.Source("pics", "pics_train", "tree", "owner/repo-one", COMMIT, "DATA/pics/pics_train",
                      manifest("pics.sha256", pics), sum(map(len, pics.values())), manifest="pics.sha256"),
            dl.Source("glyphs", "images_background", "zip", "owner/glyphs", COMMIT, "python/images_background.zip",
                      manifest("glyphs.sha256.gz", glyphs), len(self.zip), manifest="glyphs.sha256.gz",
                      archive_md5=hashlib.md5(self.zip).hexdigest()),
            dl.Source("glyphs", "course_split/list.txt", "shipped", "owner/course", COMMIT, "DATA/glyphs_train",
                      SHA(split), 0, manifest="split.txt.gz"),
        ]
        a, b, p, g, _ = self.sources
        server.serve(a, csv_a)
        server.serve(b, csv_b)
        for rel, body in pics.items():
            server.serve(p, body, rel.split("/", 1)[1])
        server.serve(g, self.zip)
        self.expected = {"alpha/a.csv": csv_a, "alpha/b.csv": csv_b, "glyphs/course_split/list.txt": split,
                         **{f"pics/{k}": v for k, v in pics.items()}, **{f"glyphs/{k}": v for k, v in glyphs.items()}}
        self.root = tmp / "data"
        self.server = server
        monkeypatch.setenv("DATA_MIRROR", server.url + "/")
        monkeypatch.setenv("DATA_DIR", str(self.root))

    def run(self) -> int:
        return dl.download(sources=self.sources)

    def assert_only_verified(self):
        """Every file under DATA_DIR (staging included) is an expected file with the expected content."""
        for f in self.root.rglob("*"):
            if f.is_file():
                rel = f.relative_to(self.root).as_posix()
                rel = rel.split("/", 1)[1] if rel.startswith(dl.STAGING + "/") else rel
                rel = rel.replace(".zip", "")
                if rel == "glyphs/images_background":           # the verified archive, kept for the next run
                    assert f.read_bytes() == self.zip
                    continue
                assert rel in self.expected, f"unexpected file left in DATA_DIR: {f}"
                assert f.read_bytes() == self.expected[rel], f"unverified content left in DATA_DIR: {f}"

    def in_place(self) -> set[str]:
        return {f.relative_to(self.root).as_posix() for f in self.root.rglob("*")
                if f.is_file() and not f.relative_to(self.root).as_posix().startswith(dl.STAGING)}


@pytest.fixture
def tiny(tmp_path, server, monkeypatch) -> Tiny:
    return Tiny(tmp_path, server, monkeypatch)


def test_success_lays_out_verified_files_and_fetches_nothing_twice(tiny, capsys):
    threads = set(threading.enumerate())
    assert tiny.run() == 0
    # no thread outlives the download (tqdm's monitor would): a later fork of common.parallel's workers would be
    # the fork of a multi-threaded process
    assert set(threading.enumerate()) == threads
    out = capsys.readouterr()
    assert tiny.in_place() == set(tiny.expected)
    tiny.assert_only_verified()
    assert not (tiny.root / dl.STAGING).exists()
    assert not (tiny.root.parent / "escaped.png").exists() and not (tiny.root / "escaped2.png").exists()
    assert "2 other archive members ignored" in out.out
    fetched = 2 + 6 + 1                      # two CSVs, six PNGs, one archive; the shipped list is no request
    assert len(tiny.server.log) == fetched and all(p.startswith("/mirror/") for p in tiny.server.log)
    nbytes = sum(len(tiny.expected[k]) for k in tiny.expected if k.startswith(("alpha/", "pics/"))) + len(tiny.zip)
    assert f"({nbytes:,} bytes, {fetched} file(s))" in out.out
    tiny.server.log.clear()
    assert tiny.run() == 0                  # already there: checked, nothing fetched
    assert tiny.server.log == [] and "nothing to fetch" in capsys.readouterr().out


def test_a_transfer_cut_short_is_redone(tiny, capsys):
    a, _, p, g, _ = tiny.sources
    cut = [f"/mirror/{a.repo}/{a.commit}/{a.path}", f"/mirror/{p.repo}/{p.commit}/{p.path}/class 2/01.png",
           f"/mirror/{g.repo}/{g.commit}/{g.path}"]
    tiny.server.cut.update(cut)
    assert tiny.run() == 0, capsys.readouterr().err
    assert all(tiny.server.log.count(c) == 2 for c in cut)
    assert tiny.in_place() == set(tiny.expected)
    tiny.assert_only_verified()


def test_a_checksum_mismatch_stops_with_one_message_and_the_next_run_continues(tiny, capsys):
    _, _, p, _, _ = tiny.sources
    bad = f"/mirror/{p.repo}/{p.commit}/{p.path}/class 1/02.png"
    good = tiny.server.routes[bad]
    tiny.server.routes[bad] = b"not the pinned bytes"
    assert tiny.run() == 2
    err = capsys.readouterr().err
    assert re.search(r"could not get pics/pics_train/class 1/02\.png\n  from: http://127\.0\.0\.1:\d+/mirror/"
                     r"owner/repo-one/0123456789abcdef0123456789abcdef01234567/DATA/pics/pics_train/class%201/02\.png\n"
                     r"  why:  checksum mismatch: expected sha256:[0-9a-f]{64}, got [0-9a-f]{64}", err), err
    assert err.count("ERROR") == 1
    tiny.assert_only_verified()
    assert tiny.in_place() == {"alpha/a.csv", "alpha/b.csv"}     # the verified parts are in place; not half a folder
    # the next run fetches only what is still missing: the bad file, then the parts not tried yet
    tiny.server.routes[bad] = good
    tiny.server.log.clear()
    assert tiny.run() == 0
    assert sorted(tiny.server.log) == sorted([bad, f"/mirror/owner/glyphs/{COMMIT}/python/images_background.zip"])
    assert tiny.in_place() == set(tiny.expected)
    tiny.assert_only_verified()


def test_http_404_names_the_file_and_the_source(tiny, capsys):
    _, b, _, _, _ = tiny.sources
    del tiny.server.routes[f"/mirror/{b.repo}/{b.commit}/{b.path}"]
    assert tiny.run() == 2
    err = capsys.readouterr().err
    assert f"could not get alpha/b.csv\n  from: {tiny.server.url}/owner/repo-two/{COMMIT}/b.csv\n  why:  HTTP 404" in err
    assert tiny.in_place() == {"alpha/a.csv"}
    tiny.assert_only_verified()


def test_a_timeout_is_reported(tiny, capsys):
    _, b, _, _, _ = tiny.sources
    tiny.server.slow.add(f"/mirror/{b.repo}/{b.commit}/{b.path}")
    assert tiny.run() == 2
    err = capsys.readouterr().err
    assert "could not get alpha/b.csv" in err and "why:  timed out" in err
    tiny.assert_only_verified()


def test_server_gone_is_one_clear_message(tiny, capsys, monkeypatch):
    with socket.socket() as s:               # a port on which nothing listens any more
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("DATA_MIRROR", f"http://127.0.0.1:{port}")
    assert tiny.run() == 2
    err = capsys.readouterr().err
    assert f"could not get alpha/a.csv\n  from: http://127.0.0.1:{port}/owner/repo-one/{COMMIT}/data/a.csv" in err
    assert "why:  cannot connect (Connection refused)" in err and err.count("ERROR") == 1
    assert tiny.in_place() == set()
    tiny.assert_only_verified()


def test_an_archive_member_with_the_wrong_checksum_is_not_laid_out(tiny, capsys):
    *_, g, _ = tiny.sources
    zbuf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(tiny.zip)) as src, zipfile.ZipFile(zbuf, "w") as out:
        for info in src.infolist():
            out.writestr(info.filename, b"tampered" if info.filename.endswith("1_1.png") else src.read(info))
    tiny.zip = zbuf.getvalue()
    tiny.sources[3] = dl.Source(**{**g.__dict__, "archive_md5": hashlib.md5(tiny.zip).hexdigest()})
    tiny.server.serve(g, tiny.zip)
    assert tiny.run() == 2
    err = capsys.readouterr().err
    assert "could not get glyphs/images_background/Alpha/character01/1_1.png (member of images_background.zip)" in err
    assert "checksum mismatch" in err
    assert not (tiny.root / "glyphs" / "images_background").exists()
    tiny.assert_only_verified()


def test_a_mirror_must_be_http(tiny, capsys, monkeypatch):
    monkeypatch.setenv("DATA_MIRROR", "file:///etc")
    assert tiny.run() == 2
    assert "DATA_MIRROR must be an http:// or https:// URL" in capsys.readouterr().err
    assert tiny.server.log == []


def test_the_real_sources_table(monkeypatch):
    """The one table of real sources is consistent; its URLs are built, never fetched."""
    monkeypatch.delenv("DATA_MIRROR", raising=False)
    assert {s.dataset for s in dl.SOURCES} == {"omniglot", "clouds", "electricity", "water_potability", "zoo",
                                               "ds_salaries"}
    for s in dl.SOURCES:
        assert re.fullmatch(r"[0-9a-f]{40}", s.commit) and re.fullmatch(r"[0-9a-f]{64}", s.sha256), s
        assert dl.url_of(s).startswith(f"https://raw.githubusercontent.com/{s.repo}/{s.commit}/")
    counts = {s.target: len(dl.manifest(s)) for s in dl.SOURCES if s.kind in ("tree", "zip")}
    assert counts == {"images_background": 19_280, "clouds_train": 474, "clouds_test": 486}
    for s in dl.SOURCES:
        if s.kind == "shipped":
            assert SHA(dl._manifest_bytes(s.manifest, s.sha256)) == s.sha256
    monkeypatch.setenv("DATA_MIRROR", "http://127.0.0.1:9/cache/")
    zip_src = next(s for s in dl.SOURCES if s.kind == "zip")
    assert dl.url_of(zip_src) == ("http://127.0.0.1:9/cache/brendenlake/omniglot/057f034baf2ecb8530bc5710e5a23584d2a519cc/"
                                  "python/images_background.zip")
    tree = next(s for s in dl.SOURCES if s.target == "clouds_train")
    assert dl.url_of(tree, "clear sky/x.jpg").endswith("/DATA/clouds/clouds_train/clear%20sky/x.jpg")
    root = data_dir()
    for s in dl.SOURCES:                        # where the real data is here (CI), the table matches it
        f = root / s.dataset / s.target
        if s.kind in ("file", "shipped") and f.is_file():
            assert dl.sha256_file(f) == s.sha256, f
            assert s.kind == "shipped" or f.stat().st_size == s.size, f


def test_run_all_get_data_end_to_end(tmp_path, server):
    """``bash run_all.sh --get-data`` through DATA_MIRROR: the real table, the real files of DATA_DIR served
    from 127.0.0.1; Omniglot and clouds are already present (linked), the small files are fetched."""
    real = data_dir()
    if missing_datasets(str(real)):
        pytest.skip(f"needs the real data under DATA_DIR={real} (CI sets DATA_DIR=../shared/data)")
    target = tmp_path / "data"
    target.mkdir()
    for name in ("omniglot", "clouds"):
        (target / name).symlink_to(real / name)
    files = [s for s in dl.SOURCES if s.kind == "file"]
    for s in files:
        server.serve(s, (real / s.dataset / s.target).read_bytes())
    dead_proxy = "http://127.0.0.1:9"           # anything not on loopback would go nowhere
    env = {**os.environ, "DATA_DIR": str(target), "DATA_MIRROR": server.url, "HTTP_PROXY": dead_proxy,
           "HTTPS_PROXY": dead_proxy, "NO_PROXY": "127.0.0.1"}
    t0 = time.time()
    p = subprocess.run(["bash", str(REPO / "run_all.sh"), "--get-data"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "setting up .venv" not in p.stdout
    assert len(server.log) == len(files) and all(x.startswith("/mirror/") for x in server.log)
    nbytes = sum(s.size for s in files)
    assert f"({nbytes:,} bytes, {len(files)} file(s))" in p.stdout
    table = p.stdout.splitlines()[-7:]          # python -m common.data's table, then DATA_DIR = ...
    assert not any("MISSING" in line for line in table) and table[-1] == f"DATA_DIR = {target}", p.stdout
    for s in files:
        assert (target / s.dataset / s.target).read_bytes() == (real / s.dataset / s.target).read_bytes()
    assert not (target / dl.STAGING).exists()
    assert time.time() - t0 < 60
