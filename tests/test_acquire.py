"""helpers.acquire: local paths, loopback HTTP downloads, Google Drive through the real gdown, /kaggle/input search,
the choice by protocol, cache eviction.

No network: HTTP is served by a thread on 127.0.0.1 only, and Google Drive by patching requests' transport under the
real gdown (its own code and exception classes run; only the bytes on the wire are made up)."""
from __future__ import annotations

import hashlib
import http.server
import io
import re
import shutil
import sys
import threading
import types
import urllib.parse
import zipfile
from pathlib import Path

import gdown
import pytest
import requests
import torch

from helpers.acquire import (AcquireError, acquire, acquire_checkpoint, default_search_roots, gdown_download_folder,
                             kaggle_mirror_instructions, parse_source, path_protocol, search_checkpoint)
from helpers.demo_checkpoints import write_demo_checkpoints
from helpers.models import get_spec, load_checkpoint
from helpers.models.checkpoint_file import CheckpointError, check_checkpoint_file, read_checkpoint

QUOTA_TEXT = "Too many users have viewed or downloaded this file recently. Please try accessing the file again later."
QUOTA_PAGE = ("<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head>"
              f"<body>{QUOTA_TEXT}</body></html>")
XS_DRIVE_ID = get_spec("convnextpose_XS").checkpoints[0].drive_id
OTHER_DRIVE_ID = "1ThisIsNotARegistryDriveFileId0"  # no registry size to compare with


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    return write_demo_checkpoints(tmp_path_factory.mktemp("demo"), ["convnextpose_XS", "convnextpose_M"])


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def server(demo):
    good = demo["convnextpose_XS"].read_bytes()
    routes: dict[str, tuple[int, bytes, int | None]] = {  # path -> (status, body, Content-Length sent)
        "/good/ConvNeXtPose_XS.tar": (200, good, len(good)),
        "/html/ConvNeXtPose_XS.tar": (200, QUOTA_PAGE.encode(), None),
        "/cut/ConvNeXtPose_XS.tar": (200, good[: len(good) // 3], len(good)),  # connection drops mid-file
        "/half/ConvNeXtPose_XS.tar": (200, good[: len(good) // 2], len(good) // 2),  # complete response, broken zip
    }
    hits: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits[self.path] = hits.get(self.path, 0) + 1
            if self.path not in routes:
                self.send_error(404, "Not Found")
                return
            status, body, length = routes[self.path]
            self.send_response(status)
            self.send_header("Content-Length", str(length if length is not None else len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def test_http_download_is_verified_cached_and_reused(server, demo, tmp_path):
    base, hits = server
    cache = tmp_path / "cache"
    url = f"{base}/good/ConvNeXtPose_XS.tar"
    path = acquire_checkpoint(url, cache_dir=cache, quiet=True)
    assert path.name == "ConvNeXtPose_XS.tar" and path.is_relative_to(cache)
    assert path.read_bytes() == demo["convnextpose_XS"].read_bytes()
    assert _files(cache) == [path]
    again = acquire_checkpoint(url, cache_dir=cache, quiet=True)
    assert again == path and hits["/good/ConvNeXtPose_XS.tar"] == 1  # reused, not fetched twice
    _, info = load_checkpoint(path)
    assert info.model_id == "convnextpose_XS"
    expected = hashlib.sha256(demo["convnextpose_XS"].read_bytes()).hexdigest()
    assert acquire_checkpoint(url, cache_dir=cache, sha256=expected, quiet=True) == path
    with pytest.raises(AcquireError, match="sha256 mismatch"):
        acquire_checkpoint(url, cache_dir=cache, sha256="0" * 64, quiet=True)


@pytest.mark.parametrize("route, message", [
    ("/html/ConvNeXtPose_XS.tar", "Too many users"),
    ("/cut/ConvNeXtPose_XS.tar", "broke off|truncated"),
    ("/half/ConvNeXtPose_XS.tar", "truncated or corrupt zip"),
    ("/missing/ConvNeXtPose_XS.tar", "HTTP 404"),
])
def test_bad_http_downloads_leave_nothing_in_the_cache(server, tmp_path, route, message):
    base, _ = server
    cache = tmp_path / "cache"
    with pytest.raises(AcquireError, match=message):
        acquire_checkpoint(f"{base}{route}", cache_dir=cache, quiet=True)
    assert _files(cache) == []
    assert not [p for p in cache.iterdir() if p.name.startswith(".partial-")]


# ---------------------------------------------------------------------------------------------- gdown
def _drive_id(tag: str) -> str:
    return ("1" + tag + "x" * 40)[:33]  # Drive ids are 25+ word characters


def _tiny_checkpoint(path: Path, epoch: int, *, legacy: bool = True) -> Path:
    """A small checkpoint written by torch.save (a state dict with _metadata), distinct per epoch."""
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2)).state_dict()
    network["0.bias"].fill_(epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "network": network}, path, _use_new_zipfile_serialization=not legacy)
    return path


DRIVE_QUOTA_SUBCAPTION = ("Too many users have viewed or downloaded this file recently. Please try accessing the file "
                          "again later. If the file you are trying to access is particularly large or is shared with "
                          "many people, it may take up to 24 hours to be able to view or download the file.")


class FakeDrive:
    """Google Drive as the real gdown sees it, served by patching requests' transport (`HTTPAdapter.send`), so no
    request leaves the machine: folders are `embeddedfolderview` pages, files `uc?id=` responses (with the
    virus-scan confirmation form for large ones), and failures are what Drive answers (its quota page, a sign-in
    page for a file that is not shared, 404 for a wrong folder id) or a connection error."""

    def __init__(self, monkeypatch):
        self.folders: dict[str, tuple[str, list[tuple[str, str]]]] = {}  # id -> (name, [(child id, child name)])
        self.files: dict[str, tuple[str, bytes, str]] = {}  # id -> (name, bytes, behaviour)
        self.downloads: list[str] = []  # ids whose bytes were sent
        self.offline = False
        monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", self._send)

    def folder(self, tag: str, name: str, *children: str) -> str:
        self.folders[_drive_id(tag)] = (name, [(c, self._name(c)) for c in children])
        return _drive_id(tag)

    def file(self, tag: str, name: str, data: bytes = b"", behaviour: str = "ok") -> str:
        self.files[_drive_id(tag)] = (name, data, behaviour)
        return _drive_id(tag)

    def _name(self, drive_id: str) -> str:
        return self.folders[drive_id][0] if drive_id in self.folders else self.files[drive_id][0]

    @staticmethod
    def _response(request, status: int, body: bytes, content_type: str, **headers) -> requests.Response:
        response = requests.Response()
        response.status_code, response.url, response.request, response.reason = status, request.url, request, "OK"
        response.headers = requests.structures.CaseInsensitiveDict(
            {"Content-Type": content_type, "Content-Length": str(len(body)), **headers})
        response.raw = io.BytesIO(body)
        response.encoding = "utf-8"
        return response

    def _html(self, request, body: str, status: int = 200) -> requests.Response:
        return self._response(request, status, body.encode(), "text/html; charset=utf-8")

    def _send(self, request, **kwargs):  # bound to this FakeDrive, called as adapter.send(request, ...)
        if self.offline:
            raise requests.exceptions.ConnectionError("HTTPSConnectionPool(host='drive.google.com', port=443): Max "
                                                      "retries exceeded (Failed to resolve 'drive.google.com')")
        url = urllib.parse.urlparse(request.url)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        if url.path == "/embeddedfolderview":
            if query["id"] not in self.folders:
                return self._html(request, "<html><head><title>Not found</title></head></html>", 404)
            name, children = self.folders[query["id"]]
            links = "".join(
                f'<a href="https://drive.google.com/drive/folders/{c}">{n}</a>' if c in self.folders else
                f'<a href="https://drive.google.com/file/d/{c}/view?usp=drive_web">{n}</a>' for c, n in children)
            return self._html(request, f"<html><head><title>{name}</title></head><body>{links}</body></html>")
        drive_id = query.get("id")
        if drive_id not in self.files:
            return self._html(request, "<html><head><title>Google Drive - Page Not Found</title></head><body>Sorry, "
                                       "the file you have requested does not exist.</body></html>", 404)
        name, data, behaviour = self.files[drive_id]
        if behaviour == "quota":
            return self._html(request, "<html><head><title>Google Drive - Quota exceeded</title></head><body>"
                                       '<p class="uc-error-caption">Sorry, you can&#39;t view or download this file at '
                                       f'this time.</p><p class="uc-error-subcaption">{DRIVE_QUOTA_SUBCAPTION}</p>'
                                       "</body></html>")
        if behaviour == "private":  # Drive answers a file that is not shared with its sign-in page
            return self._html(request, "<html><head><title>Google Drive: Sign-in</title></head><body>Sign in to "
                                       "continue to Google Drive. accounts.google.com</body></html>")
        if behaviour == "confirm" and url.netloc == "drive.google.com":
            return self._html(request, "<html><head><title>Google Drive - Virus scan warning</title></head><body>"
                                       '<form id="download-form" action="https://drive.usercontent.google.com/download"'
                                       f' method="get"><input type="hidden" name="id" value="{drive_id}"><input '
                                       'type="hidden" name="export" value="download"><input type="hidden" '
                                       'name="confirm" value="t"></form></body></html>')
        self.downloads.append(drive_id)
        return self._response(request, 200, data, "application/octet-stream",
                              **{"Content-Disposition": f'attachment; filename="{name}"'})


@pytest.fixture
def drive(monkeypatch) -> FakeDrive:
    return FakeDrive(monkeypatch)


def _posenet_folder(drive: FakeDrive, tmp_path: Path) -> str:
    """The layout of the 3DMPPE Drive folders: one snapshot_24.pth.tar per protocol, and MuCo's, same name."""
    files = {tag: _tiny_checkpoint(tmp_path / "src" / f"{tag}.pth.tar", epoch).read_bytes()
             for tag, epoch in (("P1", 1), ("P2", 2), ("MuCo", 3))}
    p1 = drive.folder("Prot1", "Protocol1", drive.file("P1", "snapshot_24.pth.tar", files["P1"], "confirm"))
    p2 = drive.folder("Prot2", "Protocol 2", drive.file("P2", "snapshot_24.pth.tar", files["P2"], "confirm"))
    h36m = drive.folder("H36M", "Human3.6M", p1, p2)
    muco = drive.folder("MuCoF", "MuCo", drive.file("MuCo", "snapshot_24.pth.tar", files["MuCo"]))
    return drive.folder("Root", "PoseNet", h36m, muco, drive.file("Readme", "README.txt", b"weights"))


def _epoch(path: Path) -> int:
    return read_checkpoint(path).obj["epoch"]


def test_drive_folder_gives_the_file_of_each_protocol(drive, tmp_path):
    folder_id = _posenet_folder(drive, tmp_path)
    cache = tmp_path / "cache"
    for protocol in (2, 1):
        got = acquire(f"drive-folder:{folder_id}", model_id="posenet", protocol=protocol, cache_dir=cache, quiet=True)
        assert (got.protocol, _epoch(got.path)) == (protocol, protocol)
        assert path_protocol(got.path.relative_to(cache)) == protocol
    assert sorted(drive.downloads) == sorted([_drive_id("P1"), _drive_id("P2")])  # MuCo's file never fetched
    drive.offline = True  # both are cached now: no network needed, the same choice
    for protocol in (1, 2):
        got = acquire(f"https://drive.google.com/drive/folders/{folder_id}", model_id="posenet", protocol=protocol,
                      cache_dir=cache, quiet=True)
        assert (got.protocol, _epoch(got.path)) == (protocol, protocol)
    assert not list(cache.rglob(".partial-*"))


def test_drive_folder_without_protocol_names_asks_for_checkpoint(drive, tmp_path):
    one = drive.folder("One", "RootNet", drive.file("R", "snapshot_19.pth.tar",
                                                    _tiny_checkpoint(tmp_path / "r.pth", 1).read_bytes()))
    with pytest.raises(AcquireError, match=r"nothing in their folder paths or file names says.*Set CHECKPOINT"):
        acquire(f"drive-folder:{one}", model_id="rootnet", protocol=2, cache_dir=tmp_path / "cache", quiet=True)
    assert drive.downloads == [] and _files(tmp_path / "cache") == []
    with pytest.raises(AcquireError, match="PROTOCOL"):
        acquire(f"drive-folder:{_posenet_folder(drive, tmp_path)}", model_id="posenet", cache_dir=tmp_path / "c2",
                quiet=True)


@pytest.mark.parametrize("behaviour, message, not_message", [
    ("quota", r"download quota.*24 h.*kaggle datasets create", "not shared"),
    ("private", r"not shared publicly.*Anyone with the link.*CHECKPOINT", "quota"),
    ("missing", r"not shared publicly.*wrong", "quota"),
    ("offline", r"network.*Internet.*CHECKPOINT", "quota"),
])
def test_drive_errors_are_told_apart(drive, tmp_path, behaviour, message, not_message):
    data = _tiny_checkpoint(tmp_path / "x.pth", 1).read_bytes()
    file_id = _drive_id("Missing") if behaviour == "missing" else drive.file(
        "F", "ConvNeXtPose_XS.tar", data, "ok" if behaviour == "offline" else behaviour)
    drive.offline = behaviour == "offline"
    with pytest.raises(AcquireError) as exc:
        acquire(f"drive:{file_id}", cache_dir=tmp_path / "cache", quiet=True)
    text = str(exc.value)
    assert re.search(message, text, re.DOTALL), text
    assert not_message not in text.lower().split("detail:")[0], text
    if behaviour == "quota":
        for needle in ("Too many users", "--dir-mode zip", "dataset-metadata.json", "Add data", "/kaggle/input",
                       file_id):
            assert needle in text, needle
    assert _files(tmp_path / "cache") == [] and not list((tmp_path / "cache").glob(".partial-*"))


def test_drive_folder_errors_are_told_apart(drive, tmp_path):
    with pytest.raises(AcquireError, match="not shared publicly"):  # a wrong folder id: Drive answers 404
        acquire(f"drive-folder:{_drive_id('Nope')}", model_id="posenet", protocol=2, cache_dir=tmp_path, quiet=True)
    quota = drive.folder("Q", "RootNet", drive.folder("QP", "Protocol2", drive.file("QF", "snapshot_19.pth.tar",
                                                                                    behaviour="quota")))
    with pytest.raises(AcquireError, match="download quota"):
        acquire(f"drive-folder:{quota}", model_id="rootnet", protocol=2, cache_dir=tmp_path, quiet=True)


def test_quota_inside_a_whole_folder_download_is_recognised(drive, tmp_path):
    """gdown's own folder download reports a failed file only as DownloadError('Failed to download the following
    files...') and prints the reason; the quota is recognised from what it printed."""
    folder_id = drive.folder("W", "PoseNet", drive.file("W1", "snapshot_24.pth.tar", behaviour="quota"))
    with pytest.raises(AcquireError) as exc:
        gdown_download_folder(folder_id, tmp_path / "out", quiet=True)
    assert "download quota" in str(exc.value) and "Failed to download the following files" in str(exc.value)


def test_gdown_raises_its_own_exception_classes(drive, tmp_path):
    """The errors above come from gdown's real classes (not a stand-in): quota and permission are both
    FileURLRetrievalError, told apart by their text."""
    quota = drive.file("Q2", "a.tar", behaviour="quota")
    private = drive.file("P3", "b.tar", behaviour="private")
    for file_id, phrase in ((quota, "Too many users"), (private, "Cannot retrieve the public link")):
        with pytest.raises(gdown.exceptions.FileURLRetrievalError, match=phrase):
            gdown.download(id=file_id, output=str(tmp_path) + "/", quiet=True, use_cookies=False)


def test_a_bad_cached_file_is_evicted_and_downloaded_again(drive, tmp_path):
    good = _tiny_checkpoint(tmp_path / "src.pth", 7).read_bytes()
    file_id = drive.file("Cache", "snapshot_7.pth.tar", good)
    cache = tmp_path / "cache"
    stale = cache / f"drive-{file_id}" / "snapshot_7.pth.tar"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(good[:-10])  # a legacy file cut short: its last storage is incomplete
    with pytest.raises(CheckpointError, match="truncated"):
        check_checkpoint_file(stale)
    path = acquire_checkpoint(f"drive:{file_id}", cache_dir=cache, quiet=True)
    assert path == stale and path.read_bytes() == good and drive.downloads == [file_id]


def test_download_smaller_than_the_released_file_is_rejected(drive, tmp_path):
    """The registry's XS file is about 42.5 MB; a small file served under its Drive id is 'truncated'."""
    small = _tiny_checkpoint(tmp_path / "x.pth", 1, legacy=False).read_bytes()
    drive.files[XS_DRIVE_ID] = ("ConvNeXtPose_XS.tar", small, "ok")
    cache = tmp_path / "cache"
    with pytest.raises(AcquireError, match="about 42.5 MB: the download is truncated"):
        acquire_checkpoint(XS_DRIVE_ID, cache_dir=cache, quiet=True)
    assert _files(cache) == []


def test_gdown_without_id_keyword(monkeypatch, demo, tmp_path):
    """gdown < 4.6 takes only url= (a stand-in with that signature; the real gdown is used everywhere else)."""
    calls = []

    def download(url=None, output=None, quiet=False, proxy=None, speed=None, use_cookies=True, verify=True,
                 fuzzy=False, resume=False):
        calls.append(url)
        target = Path(output) / "ConvNeXtPose_XS.tar"
        shutil.copy(demo["convnextpose_XS"], target)
        return str(target)

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    path = acquire_checkpoint(f"drive:{OTHER_DRIVE_ID}", cache_dir=tmp_path, quiet=True)
    assert calls == [f"https://drive.google.com/uc?id={OTHER_DRIVE_ID}"] and path.name == "ConvNeXtPose_XS.tar"
    # cached: no second call, whatever spelling of the same id
    assert acquire_checkpoint(f"https://drive.google.com/file/d/{OTHER_DRIVE_ID}/view?usp=sharing",
                              cache_dir=tmp_path, quiet=True) == path and len(calls) == 1


def test_parse_source():
    assert parse_source(f"drive:{XS_DRIVE_ID}") == ("drive-file", XS_DRIVE_ID)
    assert parse_source(XS_DRIVE_ID) == ("drive-file", XS_DRIVE_ID)
    assert parse_source(f"https://drive.google.com/uc?id={XS_DRIVE_ID}&export=download") == ("drive-file", XS_DRIVE_ID)
    assert parse_source("https://drive.google.com/drive/folders/abc_DEF-123") == ("drive-folder", "abc_DEF-123")
    assert parse_source("drive-folder:abc") == ("drive-folder", "abc")
    assert parse_source("https://www.dropbox.com/s/x/model.pth.tar?dl=1")[0] == "url"
    assert parse_source("/kaggle/input/x/ConvNeXtPose_L.tar") == ("path", "/kaggle/input/x/ConvNeXtPose_L.tar")
    with pytest.raises(AcquireError, match="id"):
        parse_source("https://drive.google.com/drive/my-drive")


# ---------------------------------------------------------------------------------------------- local + search
def test_local_paths(demo, tmp_path):
    assert acquire_checkpoint(demo["convnextpose_XS"]) == demo["convnextpose_XS"]
    page = tmp_path / "ConvNeXtPose_L.tar"
    page.write_text(QUOTA_PAGE)
    with pytest.raises(AcquireError, match="Too many users"):
        acquire_checkpoint(page)
    with pytest.raises(AcquireError, match="does not exist"):
        acquire_checkpoint(tmp_path / "nope.tar")


def test_kaggle_input_search(demo, tmp_path):
    root = tmp_path / "input"
    ds = root / "my-convnextpose-weights"
    ds.mkdir(parents=True)
    shutil.copy(demo["convnextpose_XS"], ds / "ConvNeXtPose_XS.tar")
    # Kaggle unpacked the M file (a zip named .tar) into a dataset whose slug spells ConvNeXtPose_M convnextpose-m
    with zipfile.ZipFile(demo["convnextpose_M"]) as zf:
        zf.extractall(root / "convnextpose-m")
    (root / "h36m" / "images").mkdir(parents=True)
    (root / "h36m" / "images" / "frame.jpg").write_bytes(b"\xff\xd8")

    found = acquire_checkpoint(None, model_id="convnextpose_XS", search_roots=[root])
    assert found == ds / "ConvNeXtPose_XS.tar"
    folder = acquire_checkpoint(None, model_id="convnextpose_M", search_roots=[root])
    assert folder == root / "convnextpose-m" / "snapshot_0.pth"
    model, info = load_checkpoint(folder)
    assert (info.model_id, info.format) == ("convnextpose_M", "torch-zip-folder")

    size = demo["convnextpose_XS"].stat().st_size
    digest = hashlib.sha256(demo["convnextpose_XS"].read_bytes()).hexdigest()
    assert search_checkpoint(search_roots=[root], expected_size=size) == found
    assert search_checkpoint(search_roots=[root], sha256=digest) == found

    with pytest.raises(AcquireError) as exc:
        acquire_checkpoint(None, model_id="convnextpose_L", search_roots=[root])
    message = str(exc.value)
    assert "ConvNeXtPose_L.tar" in message and get_spec("convnextpose_L").checkpoints[0].drive_id in message
    assert "kaggle datasets create" in message

    shutil.copy(demo["convnextpose_XS"], root / "h36m" / "ConvNeXtPose_XS.tar")
    with pytest.raises(AcquireError, match="several candidate"):
        acquire_checkpoint(None, model_id="convnextpose_XS", search_roots=[root])
    with pytest.raises(AcquireError, match="nothing to search for"):
        acquire_checkpoint(None, model_id="mobilehumanpose_lpski", search_roots=[root])


def test_defaults_and_instructions():
    assert default_search_roots() == ([Path("/kaggle/input")] if Path("/kaggle/input").is_dir() else [])
    text = kaggle_mirror_instructions("ConvNeXtPose_L.tar", "ID123")
    assert "https://drive.google.com/uc?id=ID123" in text and '"licenses": [{"name": "other"}]' in text


# ---------------------------------------------------------------------------------------------- protocol
@pytest.mark.parametrize("path, protocol", [
    ("Human3.6M/Protocol1/snapshot_24.pth.tar", 1),
    ("human3.6m/p2/snapshot_24.pth.tar", 2),
    ("H36M_protocol_2/snapshot_24.pth.tar", 2),
    ("Human3.6M/Protocol 1/snapshot_24.pth.tar", 1),
    ("posenet-h36m-p1/snapshot_24.pth.tar", 1),
    ("Subject 9,11 (trained on subject 1,5,6,7,8)/snapshot_19.pth.tar", 2),
    ("Subject 11 (trained on subject 1,5,6,7,8,9)/snapshot_19.pth.tar", 1),
    ("MuCo/snapshot_24.pth.tar", None),
    ("snapshot_24.pth.tar", None),
    ("protocol1_and_protocol2/snapshot_24.pth.tar", None),
    ("step1/top2/ep1/snapshot_24.pth.tar", None),
])
def test_path_protocol(path, protocol):
    assert path_protocol(path) == protocol


def test_search_and_folders_choose_by_protocol(tmp_path):
    root = tmp_path / "input"
    for p in (1, 2):
        _tiny_checkpoint(root / "posenet-weights" / f"protocol{p}" / "snapshot_24.pth.tar", p)
    for p in (1, 2):
        got = acquire(None, model_id="posenet", search_roots=[root], protocol=p)
        assert (got.protocol, _epoch(got.path)) == (p, p)
        got = acquire(str(root / "posenet-weights"), model_id="posenet", protocol=p, cache_dir=tmp_path / "c")
        assert (got.protocol, _epoch(got.path)) == (p, p)
    with pytest.raises(AcquireError, match="PROTOCOL"):
        acquire(None, model_id="posenet", search_roots=[root])

    lone = tmp_path / "lone"
    file = _tiny_checkpoint(lone / "rootnet-weights" / "snapshot_19.pth.tar", 1)
    with pytest.raises(AcquireError, match=r"one candidate checkpoint.*nothing in their folder paths.*Set CHECKPOINT"):
        acquire(None, model_id="rootnet", search_roots=[lone], protocol=2)
    assert acquire(str(file), model_id="rootnet", protocol=2) == acquire(str(file)) and \
        acquire(str(file), model_id="rootnet", protocol=2).protocol is None  # a file named by CHECKPOINT is taken

    other = tmp_path / "other"
    _tiny_checkpoint(other / "rootnet" / "p1" / "snapshot_19.pth.tar", 1)
    with pytest.raises(AcquireError, match="none is for protocol 2"):
        acquire(None, model_id="rootnet", search_roots=[other], protocol=2)
    assert acquire(None, model_id="rootnet", search_roots=[other], protocol=1).protocol == 1

    # ConvNeXtPose releases one file for both protocols: a single file is taken as it is, two are chosen between
    xs = tmp_path / "xs"
    _tiny_checkpoint(xs / "mine" / "ConvNeXtPose_XS.tar", 5, legacy=False)
    assert acquire(None, model_id="convnextpose_XS", search_roots=[xs], protocol=2).protocol is None
    _tiny_checkpoint(xs / "p1" / "ConvNeXtPose_XS.tar", 1, legacy=False)
    got = acquire(None, model_id="convnextpose_XS", search_roots=[xs], protocol=1)
    assert (got.protocol, _epoch(got.path)) == (1, 1)


def test_a_quota_page_on_disk_is_not_called_a_refused_download(tmp_path):
    """A file given as CHECKPOINT that holds Drive's quota page: nothing was downloaded now, and the message says
    that an earlier download saved the page (not "Google Drive refused the download")."""
    page = tmp_path / "snapshot_24.pth.tar"
    page.write_text("<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>Too many "
                    "users have viewed or downloaded this file recently.</body></html>")
    with pytest.raises(AcquireError) as exc:
        acquire(str(page), model_id="posenet", cache_dir=tmp_path / "cache")
    message = str(exc.value)
    assert "earlier download saved in place of the checkpoint; nothing was downloaded now" in message
    assert "refused the download" not in message
