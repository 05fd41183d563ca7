"""Get a checkpoint file: a local path, an http(s) URL, a Google Drive file or folder, or a `/kaggle/input` search.

Downloads land in a private staging folder inside the cache, are verified (no HTML pages, not
truncated, zip/tar sane, optional size and sha256) and only then renamed into place, so a failed or
interrupted download leaves nothing in the cache. Verified cached files are reused.

Sources accepted by `acquire_checkpoint`:
- a local file or folder path;
- `https://...` / `http://...` (Dropbox `?dl=1` links work);
- a Google Drive file: `drive:ID`, a bare Drive id, or a `drive.google.com` file URL;
- a Google Drive folder: `drive-folder:ID` or a `drive.google.com/drive/folders/ID` URL (pass `model_id`
  to pick the registry's file name inside it);
- `None`: search `search_roots` (default `/kaggle/input` when present) for the registry's file names
  for `model_id`, for folders Kaggle unpacked them into, or for a file of `expected_size` / `sha256`.
"""
from __future__ import annotations

import hashlib
import http.client
import inspect
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from . import environment
from .models.checkpoint_file import (DRIVE_QUOTA_PHRASES, CheckpointError, CheckpointFormatError,
                                     check_checkpoint_file, file_sha256, html_page_problem)
from .models.registry import MODEL_REGISTRY, CheckpointSource, get_spec


class AcquireError(Exception):
    """A checkpoint that could not be found or downloaded; the message says what to do."""


_DRIVE_ID = re.compile(r"^[A-Za-z0-9_-]{25,}$")
_CHECKPOINT_SUFFIXES = (".tar", ".pth", ".pt", ".ckpt", ".bin", ".zip")
_HTTP_CHUNK = 1 << 20
_SEARCH_MAX_DEPTH = 6


def default_cache_dir() -> Path:
    """Where downloads are cached: `environment.default_cache_dir()/checkpoints` (kept out of Kaggle's saved output)."""
    return environment.default_cache_dir() / "checkpoints"


def default_search_roots() -> list[Path]:
    return environment.default_input_roots()


def kaggle_mirror_instructions(file_name: str = "CHECKPOINT.tar", drive_id: str | None = None) -> str:
    """How to put a checkpoint into a Kaggle dataset once, so notebooks never depend on Drive again."""
    link = f"https://drive.google.com/uc?id={drive_id}" if drive_id else "the file's Google Drive page"
    metadata = json.dumps({"title": "h36m-checkpoints", "id": "YOUR_KAGGLE_USERNAME/h36m-checkpoints",
                           "licenses": [{"name": "other"}]})  # Kaggle needs title, id and exactly one licence
    return f"""Mirror the checkpoint to a Kaggle dataset once:
  1. Open {link} in a browser (signed in to Google) and download {file_name}.
  2. On a machine with the Kaggle CLI and ~/.kaggle/kaggle.json:
       mkdir -p h36m-checkpoints && mv ~/Downloads/{file_name} h36m-checkpoints/
       echo '{metadata}' > h36m-checkpoints/dataset-metadata.json
       kaggle datasets create -p h36m-checkpoints --dir-mode zip
     (later files: add them to the folder and run `kaggle datasets version -p h36m-checkpoints --dir-mode zip -m "add"`)
  3. In the notebook: "Add data" -> Your Datasets -> h36m-checkpoints. Then pass the path
     (/kaggle/input/h36m-checkpoints/{file_name}) or leave the source empty so the /kaggle/input search finds it.
     If Kaggle unpacked the file into a folder, that folder loads as well."""


def _quota_error(file_name: str, drive_id: str | None, detail: str) -> AcquireError:
    return AcquireError(
        "Google Drive refused the download: \"Too many users have viewed or downloaded this file recently\" "
        f"(download quota; it clears within 24 h). Detail: {detail}\n"
        + kaggle_mirror_instructions(file_name, drive_id))


# --------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------
def verify_checkpoint_file(path, *, expected_size: int | None = None, sha256: str | None = None,
                           approx_size_mb: float | None = None, drive_id: str | None = None) -> Path:
    """Check that `path` is a plausible checkpoint: not empty, not HTML, sane zip/tar, right size/sha256.

    The checks are `helpers.models.checkpoint_file.check_checkpoint_file`, the ones `load_checkpoint` runs; an
    empty file or an HTML page gets download advice here (the Kaggle mirror, Drive's quota)."""
    path = Path(path)
    try:
        check_checkpoint_file(path, expected_size=expected_size, approx_size_mb=approx_size_mb, sha256=sha256)
    except CheckpointFormatError as e:
        if e.format == "empty":
            raise AcquireError(f"{path} is empty (0 bytes): the download failed; try again.") from None
        if e.format != "html":
            raise AcquireError(str(e)) from None
        if any(p in e.head.decode("utf-8", "replace").lower() for p in DRIVE_QUOTA_PHRASES):
            raise _quota_error(path.name, drive_id, f"an HTML quota page was served instead of {path.name}") from None
        raise AcquireError(f"{path}: {html_page_problem(e.head)}. Check the link or Drive id (the file must be shared "
                           "publicly), or mirror it to a Kaggle dataset.\n"
                           + kaggle_mirror_instructions(path.name, drive_id)) from None
    except CheckpointError as e:
        raise AcquireError(str(e)) from None
    return path


# --------------------------------------------------------------------------------------------------
# Google Drive through gdown (5 and 6)
# --------------------------------------------------------------------------------------------------
def _gdown():
    try:
        import gdown
    except ImportError:
        raise AcquireError("Google Drive downloads need gdown (pip install gdown), or mirror the file to a Kaggle "
                           "dataset:\n" + kaggle_mirror_instructions()) from None
    return gdown


def _id_kwargs(fn, drive_id: str, url: str) -> dict:
    # gdown >= 4.6 takes id=; older ones only url=. Never pass fuzzy/remaining_ok: gdown 6 removed them.
    return {"id": drive_id} if "id" in inspect.signature(fn).parameters else {"url": url}


def _is_quota_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return type(exc).__name__ == "FileURLRetrievalError" or any(p in text for p in DRIVE_QUOTA_PHRASES)


def gdown_download_file(drive_id: str, output_dir: Path, *, quiet: bool = False, file_name: str = "") -> Path:
    """Download one Drive file into `output_dir` (named as Drive names it); returns its path."""
    gdown = _gdown()
    kwargs = _id_kwargs(gdown.download, drive_id, f"https://drive.google.com/uc?id={drive_id}")
    try:
        result = gdown.download(output=str(output_dir) + os.sep, quiet=quiet, **kwargs)
    except Exception as e:  # gdown raises its own and requests' errors; all become one clear message
        if _is_quota_failure(e):
            raise _quota_error(file_name or f"the file {drive_id}", drive_id, f"{type(e).__name__}: {e}") from None
        raise AcquireError(f"Google Drive download of {drive_id} failed ({type(e).__name__}: {e}). Check the id and "
                           "the network, or mirror the file to a Kaggle dataset.\n"
                           + kaggle_mirror_instructions(file_name or "CHECKPOINT.tar", drive_id)) from None
    files = [p for p in Path(output_dir).iterdir() if p.is_file()]
    if result is None or len(files) != 1:
        raise _quota_error(file_name or f"the file {drive_id}", drive_id,
                           "gdown returned no file (Drive refused the link; quota or permissions)")
    return files[0]


def gdown_download_folder(folder_id: str, output_dir: Path, *, quiet: bool = False) -> Path:
    """Download a Drive folder into `output_dir`; returns `output_dir`."""
    gdown = _gdown()
    kwargs = _id_kwargs(gdown.download_folder, folder_id, f"https://drive.google.com/drive/folders/{folder_id}")
    try:
        result = gdown.download_folder(output=str(output_dir), quiet=quiet, **kwargs)
    except Exception as e:
        if _is_quota_failure(e):
            raise _quota_error("the folder's checkpoint", None, f"{type(e).__name__}: {e}") from None
        raise AcquireError(f"Google Drive folder download of {folder_id} failed ({type(e).__name__}: {e}).") from None
    if result is None or not any(p.is_file() for p in Path(output_dir).rglob("*")):
        raise _quota_error("the folder's checkpoint", None, "gdown returned no files for the folder")
    return Path(output_dir)


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------
def parse_source(source) -> tuple[str, str]:
    """(kind, value) with kind one of "path", "url", "drive-file", "drive-folder"."""
    text = str(source).strip()
    for prefix, kind in (("drive-folder:", "drive-folder"), ("drive:", "drive-file")):
        if text.startswith(prefix):
            return kind, text[len(prefix):]
    if text.startswith(("http://", "https://")):
        parsed = urllib.parse.urlparse(text)
        if parsed.netloc.endswith(("drive.google.com", "drive.usercontent.google.com", "docs.google.com")):
            folder = re.search(r"/folders/([A-Za-z0-9_-]+)", parsed.path)
            if folder:
                return "drive-folder", folder.group(1)
            file_id = re.search(r"/d/([A-Za-z0-9_-]+)", parsed.path)
            query_id = urllib.parse.parse_qs(parsed.query).get("id")
            if file_id or query_id:
                return "drive-file", file_id.group(1) if file_id else query_id[0]
            raise AcquireError(f"cannot find a file or folder id in the Drive URL {text}")
        return "url", text
    if not Path(text).exists() and _DRIVE_ID.match(text):
        return "drive-file", text
    return "path", text


def _registry_source(model_id: str | None, *, drive_id: str | None = None,
                     url: str | None = None) -> CheckpointSource | None:
    """The registry entry a download comes from (for its file name and approximate size), if any."""
    specs = [get_spec(model_id)] if model_id else list(MODEL_REGISTRY.values())
    for spec in specs:
        for src in spec.checkpoints:
            if (drive_id and src.drive_id == drive_id) or (url and src.url == url):
                return src
    return None


def _staged_download(target_dir: Path, fetch, verify) -> Path:
    """Run `fetch(staging_dir) -> file` in a private folder inside the cache, verify, then move into `target_dir`.

    Whatever happens before the final rename (error, Ctrl-C), the staging folder is removed.
    """
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target_dir.parent))
    try:
        fetched = fetch(staging)
        verify(fetched)
        target_dir.mkdir(parents=True, exist_ok=True)
        final = target_dir / fetched.name
        os.replace(fetched, final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _http_fetch(url: str, name: str, quiet: bool):
    def fetch(staging: Path) -> Path:
        out = staging / name
        request = urllib.request.Request(url, headers={"User-Agent": "h36m-helpers"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response, open(out, "wb") as f:
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                received = 0
                with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=quiet) as bar:
                    for chunk in iter(lambda: response.read(_HTTP_CHUNK), b""):
                        f.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as e:
            raise AcquireError(f"HTTP {e.code} ({e.reason}) for {url}: check the URL.") from None
        except (urllib.error.URLError, OSError) as e:
            raise AcquireError(f"download of {url} failed ({e}); check the network and try again.") from None
        except http.client.HTTPException as e:  # e.g. IncompleteRead: the connection broke mid-file
            raise AcquireError(f"download of {url} broke off ({type(e).__name__}: {e}); try again.") from None
        if total is not None and received != total:
            raise AcquireError(f"download of {url} is truncated: {received:,} of {total:,} bytes; try again.")
        return out

    return fetch


def _cache_hit(folder: Path, verify) -> Path | None:
    files = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    if len(files) != 1:
        return None
    try:
        return verify(files[0])
    except AcquireError:
        files[0].unlink()  # a bad file in our own cache: replace it
        return None


def _find_in_tree(root: Path, names: list[str]) -> list[Path]:
    wanted = {n.lower() for n in names}
    stems = {n.lower().split(".")[0] for n in names}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        if depth >= _SEARCH_MAX_DEPTH:
            dirnames.clear()
        found += [here / f for f in filenames if f.lower() in wanted]
        # Kaggle may unpack X.tar into a folder X/ (or X.tar/) holding snapshot_N.pth/data.pkl
        if "data.pkl" in filenames and any(part.lower().split(".")[0] in stems for part in here.parts[-2:]):
            found.append(here)
            dirnames.clear()
    return sorted(found)


def _find_by_content(root: Path, expected_size: int | None, sha256: str | None) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        if len(Path(dirpath).relative_to(root).parts) >= _SEARCH_MAX_DEPTH:
            dirnames.clear()
        for f in filenames:
            p = Path(dirpath) / f
            if expected_size is not None:
                if p.stat().st_size != expected_size:
                    continue
            elif not f.lower().endswith(_CHECKPOINT_SUFFIXES):
                continue  # sha256 only: hash checkpoint-like files, not every image of a dataset
            if sha256 is None or file_sha256(p) == sha256.lower():
                found.append(p)
    return sorted(found)


def search_checkpoint(model_id: str | None = None, *, search_roots=None, expected_size: int | None = None,
                      sha256: str | None = None) -> Path:
    """Find a checkpoint under `search_roots` by the registry's file names for `model_id`, or by size/sha256."""
    roots = [Path(r) for r in (search_roots if search_roots is not None else default_search_roots())]
    roots = [r for r in roots if r.is_dir()]
    names = [s.file_name for s in get_spec(model_id).checkpoints] if model_id else []
    if not (names or expected_size or sha256):
        what = f"{model_id} has no known file name in the registry" if model_id else "no model_id"
        raise AcquireError(f"nothing to search for ({what}); pass the checkpoint path, URL or Drive id, "
                           "or expected_size / sha256.")
    found: list[Path] = []
    for root in roots:
        found += _find_in_tree(root, names) if names else _find_by_content(root, expected_size, sha256)
    if names and (expected_size or sha256):
        found = [p for p in found if _matches(p, expected_size, sha256)]
    if not found:
        looked = ", ".join(map(str, roots)) or "no existing search roots (default: /kaggle/input)"
        wanted = ", ".join(names) if names else f"size {expected_size} / sha256 {sha256}"
        src = get_spec(model_id).checkpoints[0] if model_id and names else None
        hint = (f'\nOr download it: acquire_checkpoint("drive:{src.drive_id}", model_id="{model_id}").'
                if src is not None and src.drive_id else "")
        raise AcquireError(f"no checkpoint found for {wanted} under {looked}.{hint}\n"
                           + kaggle_mirror_instructions(names[0] if names else "CHECKPOINT.tar",
                                                        src.drive_id if src else None))
    if len(found) > 1:
        listing = "\n  ".join(map(str, found))
        raise AcquireError(f"several candidate checkpoints found; pass the one you want as the source:\n  {listing}")
    return verify_checkpoint_file(found[0], expected_size=expected_size, sha256=sha256)


def _matches(path: Path, expected_size: int | None, sha256: str | None) -> bool:
    if expected_size is not None and (path.is_dir() or path.stat().st_size != expected_size):
        return False
    return sha256 is None or file_sha256(path) == sha256.lower()


def _pick_in_folder(folder: Path, model_id: str | None) -> Path:
    names = [s.file_name for s in get_spec(model_id).checkpoints] if model_id else []
    found = _find_in_tree(folder, names) if names else []
    if not found:
        found = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(_CHECKPOINT_SUFFIXES))
    if len(found) != 1:
        listing = ", ".join(p.relative_to(folder).as_posix() for p in found) or "no checkpoint-like files"
        raise AcquireError(f"cannot choose a checkpoint in {folder} ({listing}); pass model_id or the file's path.")
    return found[0]


def acquire_checkpoint(source=None, *, model_id: str | None = None, cache_dir=None, search_roots=None,
                       expected_size: int | None = None, sha256: str | None = None, quiet: bool = False) -> Path:
    """Return a local, verified checkpoint path (file or extracted folder) for `source`; see the module doc."""
    if model_id is not None:
        get_spec(model_id)
    if source is None or str(source).strip() == "":
        return search_checkpoint(model_id, search_roots=search_roots, expected_size=expected_size, sha256=sha256)
    kind, value = parse_source(source)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    if kind == "path":
        path = Path(value).expanduser()
        if not path.exists():
            raise AcquireError(f"checkpoint path does not exist: {path}")
        if path.is_dir() and not (path / "data.pkl").is_file():
            nested = [d for d in path.iterdir() if d.is_dir() and (d / "data.pkl").is_file()]
            if len(nested) == 1:
                return verify_checkpoint_file(nested[0], sha256=sha256)
            return _pick_in_folder(path, model_id)
        return verify_checkpoint_file(path, expected_size=expected_size, sha256=sha256)

    if kind == "url":
        registry = _registry_source(model_id, url=value)
        name = Path(urllib.parse.unquote(urllib.parse.urlparse(value).path)).name or (
            registry.file_name if registry else "checkpoint")
        approx = registry.approx_size_mb if registry else None

        def verify(p: Path) -> Path:
            return verify_checkpoint_file(p, expected_size=expected_size, sha256=sha256, approx_size_mb=approx)

        folder = cache / f"url-{hashlib.sha256(value.encode()).hexdigest()[:16]}"
        return _cache_hit(folder, verify) or _staged_download(folder, _http_fetch(value, name, quiet), verify)

    if kind == "drive-file":
        registry = _registry_source(model_id, drive_id=value)
        approx = registry.approx_size_mb if registry else None

        def verify(p: Path) -> Path:
            return verify_checkpoint_file(p, expected_size=expected_size, sha256=sha256, approx_size_mb=approx,
                                          drive_id=value)

        folder = cache / f"drive-{value}"
        file_name = registry.file_name if registry else ""
        return _cache_hit(folder, verify) or _staged_download(
            folder, lambda staging: gdown_download_file(value, staging, quiet=quiet, file_name=file_name), verify)

    # drive-folder: download the whole folder once (the model's file verified before it enters the cache)
    folder = cache / f"drive-folder-{value}"
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
        try:
            content = gdown_download_folder(value, staging / "content", quiet=quiet)
            verify_checkpoint_file(_pick_in_folder(content, model_id), expected_size=expected_size, sha256=sha256)
            os.replace(content, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return verify_checkpoint_file(_pick_in_folder(folder, model_id), expected_size=expected_size, sha256=sha256)
