"""helpers.acquire: local paths, loopback HTTP downloads, a fake gdown (5- and 6-style), /kaggle/input search.

No network: HTTP is served by a thread on 127.0.0.1 only, and gdown is a stand-in module."""
from __future__ import annotations

import hashlib
import http.server
import shutil
import sys
import threading
import types
import zipfile
from pathlib import Path

import pytest

from helpers.acquire import (AcquireError, acquire_checkpoint, default_search_roots, kaggle_mirror_instructions,
                             parse_source, search_checkpoint)
from helpers.demo_checkpoints import write_demo_checkpoints
from helpers.models import get_spec, load_checkpoint

QUOTA_TEXT = "Too many users have viewed or downloaded this file recently. Please try accessing the file again later."
QUOTA_PAGE = ("<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head>"
              f"<body>{QUOTA_TEXT}</body></html>")
XS_DRIVE_ID = get_spec("convnextpose_XS").checkpoints[0].drive_id
OTHER_DRIVE_ID = "1ThisIsNotARegistryDriveFileId0"  # no registry size to compare with


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    return write_demo_checkpoints(tmp_path_factory.mktemp("demo"), ["convnextpose_XS", "convnextpose_M", "posenet"])


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
def _fake_gdown(monkeypatch, style: str, behaviour: str, payload: bytes = b"", calls: list | None = None):
    """A stand-in gdown module: `style` "v6" (id=, no fuzzy/remaining_ok) or "v4" (url= only, fuzzy)."""
    calls = calls if calls is not None else []

    class FileURLRetrievalError(Exception):
        pass

    def _deliver(output: str, name: str):
        if behaviour == "quota-exception":
            raise FileURLRetrievalError(f"Failed to retrieve file url:\n\n\t{QUOTA_TEXT}\n\nYou may still be able to "
                                        "access the file from the browser")
        target = Path(output) / name if output.endswith(("/", "\\")) else Path(output)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(QUOTA_PAGE.encode() if behaviour == "quota-page" else payload)
        return str(target)

    if style == "v6":
        def download(url=None, output=None, quiet=False, proxy=None, speed=None, use_cookies=True, verify=True,
                     id=None, resume=False, format=None, user_agent=None, log_messages=None):
            calls.append({"url": url, "id": id, "output": output})
            return _deliver(output, "ConvNeXtPose_XS.tar")

        def download_folder(url=None, id=None, output=None, quiet=False, proxy=None, speed=None, use_cookies=True,
                            verify=True, user_agent=None, skip_download=False, resume=False):
            calls.append({"folder": id, "output": output})
            for name in ("snapshot_24.pth.tar", "notes.txt"):
                target = Path(output) / "Human3.6M" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(payload if name.endswith(".tar") else b"readme")
            return [str(p) for p in Path(output).rglob("*") if p.is_file()]
    else:
        def download(url=None, output=None, quiet=False, proxy=None, speed=None, use_cookies=True, verify=True,
                     fuzzy=False, resume=False):
            calls.append({"url": url, "output": output})
            return _deliver(output, "ConvNeXtPose_XS.tar")

        download_folder = None

    module = types.ModuleType("gdown")
    module.download, module.download_folder = download, download_folder
    module.exceptions = types.SimpleNamespace(FileURLRetrievalError=FileURLRetrievalError)
    monkeypatch.setitem(sys.modules, "gdown", module)
    return calls


@pytest.mark.parametrize("style", ["v6", "v4"])
def test_gdown_adapter_both_versions(monkeypatch, demo, tmp_path, style):
    calls = _fake_gdown(monkeypatch, style, "ok", demo["convnextpose_XS"].read_bytes())
    cache = tmp_path / "cache"
    path = acquire_checkpoint(f"drive:{OTHER_DRIVE_ID}", model_id="convnextpose_XS", cache_dir=cache, quiet=True)
    assert path.name == "ConvNeXtPose_XS.tar" and _files(cache) == [path]
    if style == "v6":
        assert calls[0]["id"] == OTHER_DRIVE_ID and calls[0]["url"] is None
    else:
        assert calls[0]["url"] == f"https://drive.google.com/uc?id={OTHER_DRIVE_ID}"
    # cached: no second call, whatever spelling of the same id
    assert acquire_checkpoint(f"https://drive.google.com/file/d/{OTHER_DRIVE_ID}/view?usp=sharing",
                              cache_dir=cache, quiet=True) == path
    assert len(calls) == 1


def test_download_smaller_than_the_released_file_is_rejected(monkeypatch, demo, tmp_path):
    """The registry's XS file is about 42.5 MB; the 14 MB demo file served under its Drive id is 'truncated'."""
    _fake_gdown(monkeypatch, "v6", "ok", demo["convnextpose_XS"].read_bytes())
    cache = tmp_path / "cache"
    with pytest.raises(AcquireError, match="about 42.5 MB: the download is truncated"):
        acquire_checkpoint(XS_DRIVE_ID, cache_dir=cache, quiet=True)
    assert _files(cache) == []


@pytest.mark.parametrize("behaviour", ["quota-exception", "quota-page"])
def test_drive_quota_explains_the_kaggle_mirror(monkeypatch, tmp_path, behaviour):
    _fake_gdown(monkeypatch, "v6", behaviour)
    cache = tmp_path / "cache"
    with pytest.raises(AcquireError) as exc:
        acquire_checkpoint(XS_DRIVE_ID, model_id="convnextpose_XS", cache_dir=cache, quiet=True)
    message = str(exc.value)
    for needle in ("Too many users", "kaggle datasets create -p", "--dir-mode zip", "dataset-metadata.json",
                   "Add data", "/kaggle/input", XS_DRIVE_ID):
        assert needle in message, needle
    assert _files(cache) == [] and not list(cache.glob(".partial-*"))


def test_drive_folder_download_picks_the_model_file(monkeypatch, demo, tmp_path):
    calls = _fake_gdown(monkeypatch, "v6", "ok", demo["posenet"].read_bytes())
    folder_id = get_spec("posenet").checkpoints[0].drive_folder
    path = acquire_checkpoint(f"https://drive.google.com/drive/folders/{folder_id}", model_id="posenet",
                              cache_dir=tmp_path, quiet=True)
    assert path.name == "snapshot_24.pth.tar" and calls[0]["folder"] == folder_id
    assert load_checkpoint(path)[1].model_id == "posenet"


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
    # Kaggle unpacked the M file (a zip named .tar) into ConvNeXtPose_M/snapshot_0.pth/
    with zipfile.ZipFile(demo["convnextpose_M"]) as zf:
        zf.extractall(root / "other-dataset" / "ConvNeXtPose_M")
    (root / "h36m" / "images").mkdir(parents=True)
    (root / "h36m" / "images" / "frame.jpg").write_bytes(b"\xff\xd8")

    found = acquire_checkpoint(None, model_id="convnextpose_XS", search_roots=[root])
    assert found == ds / "ConvNeXtPose_XS.tar"
    folder = acquire_checkpoint(None, model_id="convnextpose_M", search_roots=[root])
    assert folder == root / "other-dataset" / "ConvNeXtPose_M" / "snapshot_0.pth"
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
