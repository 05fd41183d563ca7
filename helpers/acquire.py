"""Get a checkpoint file: a local path, an http(s) URL, a Google Drive file or folder, or a `/kaggle/input` search.

Downloads land in a private staging folder inside the cache, are verified (no HTML pages; the whole structure
checked, so a truncated zip or legacy file is caught; optional size and sha256) and only then renamed into place,
so a failed or interrupted download leaves nothing in the cache. Verified cached files are reused; a cached file
that fails its check is removed and downloaded again.

Sources accepted by `acquire` (and `acquire_checkpoint`, which returns the path alone):
- a local file or folder path;
- `https://...` / `http://...` (Dropbox `?dl=1` links work);
- a Google Drive file: `drive:ID`, a bare Drive id, or a `drive.google.com` file URL;
- a Google Drive folder: `drive-folder:ID` or a `drive.google.com/drive/folders/ID` URL: its listing is read,
  the registry's file name for `model_id` is chosen (by `protocol` where the folder holds one per protocol, as
  PoseNet's and RootNet's do) and only that file is downloaded;
- `None`: search `search_roots` (default `/kaggle/input` when present) for the registry's file names
  for `model_id`, for folders Kaggle unpacked them into, or for a file of `expected_size` / `sha256`.

Where several files could be meant, the folder path or file name must say which protocol each is for
(`path_protocol`: "protocol1", "Protocol 2", "p1", "trained on subject 1,5,6,7,8"); where nothing tells, the error
asks for CHECKPOINT. Google Drive failures are told apart: the download quota, a file that is not shared (or a
wrong id), and the network, each with its remedy.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import inspect
import io
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from . import environment
from .models.checkpoint_file import (DRIVE_QUOTA_PHRASES, CheckpointError, CheckpointFormatError,
                                     check_checkpoint_file, file_sha256, html_page_problem)
from .models.registry import MODEL_REGISTRY, CheckpointSource, display_name, get_spec
from .protocol import PROTOCOLS


class AcquireError(Exception):
    """A checkpoint that could not be found or downloaded; the message says what to do."""


class CheckpointNotFound(AcquireError):
    """The search found no candidate at all (as opposed to candidates it could not choose among)."""


_DRIVE_ID = re.compile(r"^[A-Za-z0-9_-]{25,}$")
_CHECKPOINT_SUFFIXES = (".tar", ".pth", ".pt", ".ckpt", ".bin", ".zip")
_HTTP_CHUNK = 1 << 20
_SEARCH_MAX_DEPTH = 6


def default_cache_dir() -> Path:
    """Where downloads are cached: `environment.default_cache_dir()/checkpoints` (kept out of Kaggle's saved output)."""
    return environment.default_cache_dir() / "checkpoints"


def default_search_roots() -> list[Path]:
    return environment.default_input_roots()


def kaggle_mirror_instructions(file_name: str = "CHECKPOINT.tar", drive_id: str | None = None, *,
                               folder: bool = False) -> str:
    """How to put a checkpoint into a Kaggle dataset once, so notebooks never depend on Drive again (`drive_id`:
    the file's Drive id, or with `folder` the Drive folder's)."""
    link = (f"https://drive.google.com/drive/folders/{drive_id} (the file inside it)" if drive_id and folder
            else f"https://drive.google.com/uc?id={drive_id}" if drive_id else "the file's Google Drive page")
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


_LOCAL_COPY = "set CHECKPOINT to a copy you have, or mirror the file to a Kaggle dataset once"


def _quota_error(file_name: str, drive_id: str | None, detail: str, folder: bool = False) -> AcquireError:
    return AcquireError(
        "Google Drive refused the download: \"Too many users have viewed or downloaded this file recently\" "
        f"(download quota; it clears within 24 h: try again later, or {_LOCAL_COPY}). Detail: {detail}\n"
        + kaggle_mirror_instructions(file_name, drive_id, folder=folder))


def _permission_error(what: str, drive_id: str | None, file_name: str, detail: str,
                      folder: bool = False) -> AcquireError:
    return AcquireError(
        f"Google Drive would not give {what}: it is not shared publicly (\"Anyone with the link\"), or the id "
        f"{drive_id or ''} is wrong or the file was removed. Check the id in the link, or {_LOCAL_COPY}. "
        f"Detail: {detail}\n" + kaggle_mirror_instructions(file_name, drive_id, folder=folder))


def _network_error(what: str, detail: str) -> AcquireError:
    return AcquireError(
        f"the download of {what} failed on the network (no connection, a timeout, or the connection broke off): "
        "check the internet connection and try again; on Kaggle, the notebook's Settings must have Internet turned "
        f"on (it needs a phone-verified account). Or {_LOCAL_COPY}. Detail: {detail}")


# --------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------
def verify_checkpoint_file(path, *, expected_size: int | None = None, sha256: str | None = None,
                           approx_size_mb: float | None = None, drive_id: str | None = None,
                           downloaded: bool = True) -> Path:
    """Check that `path` is a complete checkpoint: not empty, not HTML, its whole structure sound (a zip's, tar's
    or extracted folder's records, a legacy file's pickles and storages: a truncated download of any format fails
    here), right size/sha256.

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
        quota = any(p in e.head.decode("utf-8", "replace").lower() for p in DRIVE_QUOTA_PHRASES)
        if quota and downloaded:
            raise _quota_error(path.name, drive_id, f"an HTML quota page was served instead of {path.name}") from None
        if quota:  # a file on disk: nothing was downloaded now, an earlier download saved the page
            raise AcquireError(
                f"{path} is a Google Drive quota page (\"Too many users have viewed or downloaded this file "
                "recently\") that an earlier download saved in place of the checkpoint; nothing was downloaded now. "
                "Delete it and download the file again once the quota clears (within 24 h), or mirror it to a "
                "Kaggle dataset.\n" + kaggle_mirror_instructions(path.name, drive_id)) from None
        raise AcquireError(f"{path}: {html_page_problem(e.head)}. Check the link or Drive id (the file must be shared "
                           "publicly), or mirror it to a Kaggle dataset.\n"
                           + kaggle_mirror_instructions(path.name, drive_id)) from None
    except CheckpointError as e:
        raise AcquireError(str(e)) from None
    return path


# --------------------------------------------------------------------------------------------------
# Which protocol a path is for
# --------------------------------------------------------------------------------------------------
_PROTOCOL_WORD = re.compile(r"(?<![a-z0-9])(?:protocol|prot|p)[\s_.-]*([12])(?![0-9])")
_TRAINED_ON = re.compile(r"trained[\s_-]+on[\s_-]+(?:subjects?|s)[\s_-]*((?:s?\d+[\s,_&+-]*(?:and[\s_-]*)?)+)")


def path_protocol(relative_path) -> int | None:
    """The protocol a checkpoint's path names (the folders below where it was found, and its file name): "p1",
    "Protocol 2", "protocol_1", "H36M_P2", or "trained on subject 1,5,6,7,8" (protocol 2's training subjects;
    with S9 it is protocol 1). None when the path names none, or both."""
    named = set()
    for part in Path(relative_path).parts:
        text = part.lower()
        named.update(int(n) for n in _PROTOCOL_WORD.findall(text))
        for subjects in _TRAINED_ON.findall(text):
            found = tuple(sorted({int(n) for n in re.findall(r"\d+", subjects)}))
            named.update(n for n, p in PROTOCOLS.items() if tuple(sorted(p.train_subjects)) == found)
    return named.pop() if len(named) == 1 else None


def _needs_protocol(model_id: str | None) -> bool:
    return bool(model_id) and any(s.one_per_protocol for s in get_spec(model_id).checkpoints)


def _choose(found: list[tuple[Path, str]], model_id: str | None, protocol: int | None,
            where: str) -> tuple[Path, int | None]:
    """One of `found` ((path, its path below where it was found)), and the protocol it was chosen for.

    A file is taken as it is when it is the only one and its release has one file for both protocols; else the
    path must name `protocol` (`path_protocol`), and exactly one file may. Otherwise the error lists the files
    and asks for CHECKPOINT (or PROTOCOL, when none was given)."""
    needs = _needs_protocol(model_id)
    if len(found) == 1 and not needs:
        return found[0][0], None
    listing = "\n  ".join(f"{rel}  (protocol {path_protocol(rel) or '?'})" for _, rel in found)
    what = f"{len(found)} candidate checkpoints" if len(found) > 1 else "one candidate checkpoint"
    why = (f" {display_name(get_spec(model_id))} releases one file of this name per protocol, so the path must "
           "say which protocol a file is for" if needs else "")
    if protocol is None:
        raise AcquireError(f"{where}: {what}; cannot choose without PROTOCOL.{why}. Set PROTOCOL (1 or 2), or "
                           f"CHECKPOINT to the file you mean:\n  {listing}")
    matching = [path for path, rel in found if path_protocol(rel) == protocol]
    if len(matching) == 1:
        return matching[0], protocol
    if matching:
        problem = f"{len(matching)} files are for protocol {protocol}"
    elif any(path_protocol(rel) is not None for _, rel in found):
        problem = f"none is for protocol {protocol}"
    else:
        problem = "nothing in their folder paths or file names says which protocol they are for"
    raise AcquireError(f"{where}: {what}, and {problem}.{why} A model trained for the other protocol (protocol 1 "
                       "trains on S9) gives wrong, flattering numbers, so none was taken. Set CHECKPOINT "
                       f"to the protocol-{protocol} file:\n  {listing}")


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


def _gdown_kwargs(fn, drive_id: str, url: str, **extra) -> dict:
    """gdown >= 4.6 takes id=; older ones only url=. Never pass fuzzy/remaining_ok: gdown 6 removed them. The
    cookies file in the home folder is neither read nor written (use_cookies=False) where gdown allows it."""
    parameters = inspect.signature(fn).parameters
    kwargs = {"id": drive_id} if "id" in parameters else {"url": url}
    if "use_cookies" in parameters:
        kwargs["use_cookies"] = False
    kwargs.update({k: v for k, v in extra.items() if k in parameters})
    return kwargs


def _is_network_failure(exc: BaseException) -> bool:
    try:
        import requests
        if isinstance(exc, requests.exceptions.RequestException):
            return True
    except ImportError:
        pass
    text = str(exc).lower()
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) or any(
        p in text for p in ("connection", "timed out", "ended early", "broke off", "incomplete", "retries"))


def drive_failure(exc: BaseException, what: str, drive_id: str | None, file_name: str, log: str = "",
                  folder: bool = False) -> AcquireError:
    """gdown's error said truly: the quota, a file that is not shared or a wrong id, or the network; each with its
    remedy. `log`: what gdown printed meanwhile (a folder download prints each file's reason there and raises
    only `DownloadError("Failed to download the following files...")`)."""
    reasons = [line.strip() for line in log.splitlines() if line.strip().startswith("Failed to download")]
    detail = f"{type(exc).__name__}: {_first_lines(exc)}" + (f" ({' '.join(reasons)[:400]})" if reasons else "")
    text = (str(exc) + "\n" + log).lower()
    if any(p in text for p in DRIVE_QUOTA_PHRASES):
        return _quota_error(file_name, drive_id, detail, folder)
    if any(p in text for p in ("cannot retrieve the public link", "permission", "anyone with the link",
                               "failed to retrieve folder contents", "status code 40")):
        return _permission_error(what, drive_id, file_name, detail, folder)
    if _is_network_failure(exc):
        return _network_error(what, detail)
    mirror = kaggle_mirror_instructions(file_name, drive_id, folder=folder)
    if "failed to download the following files" in text:  # the reasons were printed, not raised
        return AcquireError(f"Google Drive did not deliver some files of {what} (gdown printed each file's reason "
                            "above: the download quota, permissions or the network). Try again later, or "
                            f"{_LOCAL_COPY}. Detail: {detail}\n" + mirror)
    return AcquireError(f"Google Drive download of {what} failed ({detail}). Check the id, try again later, or "
                        f"{_LOCAL_COPY}.\n" + mirror)


def _first_lines(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text if len(text) <= limit else text[:limit] + "..."


def gdown_download_file(drive_id: str, output_dir: Path, *, quiet: bool = False, file_name: str = "") -> Path:
    """Download one Drive file into `output_dir` (named as Drive names it); returns its path."""
    gdown = _gdown()
    what = file_name or f"the Drive file {drive_id}"
    kwargs = _gdown_kwargs(gdown.download, drive_id, f"https://drive.google.com/uc?id={drive_id}")
    try:
        result = gdown.download(output=str(output_dir) + os.sep, quiet=quiet, **kwargs)
    except Exception as e:  # gdown raises its own and requests' errors; each becomes one clear message
        raise drive_failure(e, what, drive_id, file_name or "CHECKPOINT.tar") from None
    files = [p for p in Path(output_dir).iterdir() if p.is_file()]
    if result is None or len(files) != 1:  # older gdown printed the reason and returned None
        raise AcquireError(f"Google Drive gave no file for {what} (gdown printed why above: the download quota, or a "
                           f"file that is not shared publicly). Try again later, or {_LOCAL_COPY}.\n"
                           + kaggle_mirror_instructions(file_name or "CHECKPOINT.tar", drive_id))
    return files[0]


def gdown_list_folder(folder_id: str, output_dir: Path, *, quiet: bool = False) -> list[tuple[str, str]] | None:
    """The files of a Drive folder as (Drive file id, path inside the folder), without downloading them; None
    when this gdown cannot list a folder without downloading it."""
    gdown = _gdown()
    if "skip_download" not in inspect.signature(gdown.download_folder).parameters:
        return None
    kwargs = _gdown_kwargs(gdown.download_folder, folder_id, f"https://drive.google.com/drive/folders/{folder_id}",
                           skip_download=True)
    try:
        entries = gdown.download_folder(output=str(output_dir), quiet=quiet, **kwargs)
    except Exception as e:
        raise drive_failure(e, f"the Drive folder {folder_id}", folder_id, "CHECKPOINT.tar", folder=True) from None
    if not entries:
        raise _permission_error(f"the Drive folder {folder_id}", folder_id, "CHECKPOINT.tar",
                                "gdown listed no files in the folder", folder=True)
    return [(entry.id, PurePosixPath(str(entry.path).replace(os.sep, "/")).as_posix()) for entry in entries]


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self._streams = streams

    def write(self, text: str) -> int:
        for stream in self._streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self._streams:
            stream.flush()


def gdown_download_folder(folder_id: str, output_dir: Path, *, quiet: bool = False) -> Path:
    """Download a whole Drive folder into `output_dir` (gdown without `skip_download`); returns `output_dir`.
    gdown reports each failed file only on stderr, so that is read too (and shown unless `quiet`)."""
    gdown = _gdown()
    kwargs = _gdown_kwargs(gdown.download_folder, folder_id, f"https://drive.google.com/drive/folders/{folder_id}")
    log = io.StringIO()
    try:
        with contextlib.redirect_stderr(log if quiet else _Tee(sys.stderr, log)):
            result = gdown.download_folder(output=str(output_dir), quiet=False, **kwargs)
    except Exception as e:
        raise drive_failure(e, f"the Drive folder {folder_id}", folder_id, "CHECKPOINT.tar", log.getvalue(),
                            folder=True) from None
    if result is None or not any(p.is_file() for p in Path(output_dir).rglob("*")):
        raise _permission_error(f"the Drive folder {folder_id}", folder_id, "CHECKPOINT.tar",
                                "gdown returned no files for the folder", folder=True)
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


def _staged_download(target_dir: Path, fetch, verify, name: str | None = None) -> Path:
    """Run `fetch(staging_dir) -> file` in a private folder inside the cache, verify, then move into `target_dir`
    (as `name`, default the fetched file's name).

    Whatever happens before the final rename (error, Ctrl-C), the staging folder is removed.
    """
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target_dir.parent))
    try:
        fetched = fetch(staging)
        verify(fetched)
        target_dir.mkdir(parents=True, exist_ok=True)
        final = target_dir / (name or fetched.name)
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
    return _verified_or_evicted(files[0], verify)


def _verified_or_evicted(path: Path, verify) -> Path | None:
    """A cached file that passes `verify`, or None after removing it (a bad file in our own cache is replaced)."""
    try:
        return verify(path)
    except AcquireError:
        path.unlink()
        return None


def _normalized(name: str) -> str:
    """A name as Kaggle may spell it in a dataset slug: lower case, '-' for '_' and spaces."""
    return re.sub(r"[\s_-]+", "-", name.lower())


def _find_in_tree(root: Path, names: list[str]) -> list[Path]:
    wanted = {n.lower() for n in names}
    stems = {_normalized(n.split(".")[0]) for n in names}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        if depth >= _SEARCH_MAX_DEPTH:
            dirnames.clear()
        found += [here / f for f in filenames if f.lower() in wanted]
        # Kaggle may unpack X.tar into a folder X/ (or X.tar/, or a dataset slug x-y for X_Y) holding
        # snapshot_N.pth/data.pkl
        if "data.pkl" in filenames and any(_normalized(part.split(".")[0]) in stems for part in here.parts[-2:]):
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


@dataclass(frozen=True)
class Acquired:
    """A local, verified checkpoint, and the protocol it was chosen for: its folder path or file name says so
    (`path_protocol`), where the choice depended on it; None where no choice was made by protocol."""

    path: Path
    protocol: int | None = None


def search_checkpoint(model_id: str | None = None, *, search_roots=None, expected_size: int | None = None,
                      sha256: str | None = None, protocol: int | None = None) -> Path:
    """Find a checkpoint under `search_roots` by the registry's file names for `model_id`, or by size/sha256."""
    return _search(model_id, search_roots=search_roots, expected_size=expected_size, sha256=sha256,
                   protocol=protocol).path


def _search(model_id: str | None, *, search_roots, expected_size: int | None, sha256: str | None,
            protocol: int | None) -> Acquired:
    roots = [Path(r) for r in (search_roots if search_roots is not None else default_search_roots())]
    roots = [r for r in roots if r.is_dir()]
    names = [s.file_name for s in get_spec(model_id).checkpoints] if model_id else []
    if not (names or expected_size or sha256):
        what = f"{model_id} has no known file name in the registry" if model_id else "no model_id"
        raise CheckpointNotFound(f"nothing to search for ({what}); set CHECKPOINT to the checkpoint's path, URL or "
                                 "Drive id.")
    found: list[tuple[Path, str]] = []
    for root in roots:
        hits = _find_in_tree(root, names) if names else _find_by_content(root, expected_size, sha256)
        found += [(p, p.relative_to(root).as_posix()) for p in hits]
    if names and (expected_size or sha256):
        found = [(p, rel) for p, rel in found if _matches(p, expected_size, sha256)]
    if not found:
        looked = ", ".join(map(str, roots)) or "no existing search roots (default: /kaggle/input)"
        wanted = ", ".join(names) if names else f"size {expected_size} / sha256 {sha256}"
        src = get_spec(model_id).checkpoints[0] if model_id and names else None
        hint = (f'\nOr download it: CHECKPOINT = "drive:{src.drive_id}".' if src is not None and src.drive_id
                else "")
        raise CheckpointNotFound(f"no checkpoint found for {wanted} under {looked}.{hint}\n"
                           + kaggle_mirror_instructions(names[0] if names else "CHECKPOINT.tar",
                                                        src.drive_id if src else None))
    if len(found) > 1 and not _needs_protocol(model_id) and not any(path_protocol(rel) for _, rel in found):
        listing = "\n  ".join(str(p) for p, _ in found)
        raise AcquireError("several candidate checkpoints found; set CHECKPOINT to the one you want:"
                           f"\n  {listing}")
    path, chosen = _choose(found, model_id, protocol, f"under {', '.join(map(str, roots))}")
    return Acquired(verify_checkpoint_file(path, expected_size=expected_size, sha256=sha256), chosen)


def _matches(path: Path, expected_size: int | None, sha256: str | None) -> bool:
    if expected_size is not None and (path.is_dir() or path.stat().st_size != expected_size):
        return False
    return sha256 is None or file_sha256(path) == sha256.lower()


def _candidates_in(entries: list[str], model_id: str | None) -> list[str]:
    """The paths (inside a folder) that may be the model's checkpoint: its registry file names, else any
    checkpoint-like file."""
    names = {s.file_name.lower() for s in get_spec(model_id).checkpoints} if model_id else set()
    if names:
        return [e for e in entries if PurePosixPath(e).name.lower() in names]
    return [e for e in entries if e.lower().endswith(_CHECKPOINT_SUFFIXES)]


def _pick_in_folder(folder: Path, model_id: str | None, protocol: int | None) -> tuple[Path, int | None]:
    names = [s.file_name for s in get_spec(model_id).checkpoints] if model_id else []
    found = _find_in_tree(folder, names) if names else []
    if not found:
        found = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(_CHECKPOINT_SUFFIXES))
    if not found:
        raise AcquireError(f"no checkpoint in {folder}" + (f" (looked for {', '.join(names)})" if names else "")
                           + "; set CHECKPOINT to the file's path.")
    return _choose([(p, p.relative_to(folder).as_posix()) for p in found], model_id, protocol, str(folder))


def acquire_checkpoint(source=None, *, model_id: str | None = None, cache_dir=None, search_roots=None,
                       expected_size: int | None = None, sha256: str | None = None, quiet: bool = False,
                       protocol: int | None = None) -> Path:
    """Return a local, verified checkpoint path (file or extracted folder) for `source`; see `acquire`."""
    return acquire(source, model_id=model_id, cache_dir=cache_dir, search_roots=search_roots,
                   expected_size=expected_size, sha256=sha256, quiet=quiet, protocol=protocol).path


def acquire(source=None, *, model_id: str | None = None, cache_dir=None, search_roots=None,
            expected_size: int | None = None, sha256: str | None = None, quiet: bool = False,
            protocol: int | None = None) -> Acquired:
    """A local, verified checkpoint for `source` (see the module doc), and the protocol it was chosen for.

    `protocol` (the run's PROTOCOL) chooses among files of the same name in a folder or under the search roots
    (PoseNet's and RootNet's Drive folders hold one per protocol)."""
    if model_id is not None:
        get_spec(model_id)
    if source is None or str(source).strip() == "":
        return _search(model_id, search_roots=search_roots, expected_size=expected_size, sha256=sha256,
                       protocol=protocol)
    kind, value = parse_source(source)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    if kind == "path":
        path = Path(value).expanduser()
        if not path.exists():
            raise AcquireError(f"checkpoint path does not exist: {path}")
        if path.is_dir() and not (path / "data.pkl").is_file():
            nested = [d for d in path.iterdir() if d.is_dir() and (d / "data.pkl").is_file()]
            if len(nested) == 1:
                return Acquired(verify_checkpoint_file(nested[0], sha256=sha256, downloaded=False))
            chosen, chosen_protocol = _pick_in_folder(path, model_id, protocol)
            return Acquired(verify_checkpoint_file(chosen, expected_size=expected_size, sha256=sha256,
                                                   downloaded=False), chosen_protocol)
        return Acquired(verify_checkpoint_file(path, expected_size=expected_size, sha256=sha256, downloaded=False))

    if kind == "url":
        registry = _registry_source(model_id, url=value)
        name = Path(urllib.parse.unquote(urllib.parse.urlparse(value).path)).name or (
            registry.file_name if registry else "checkpoint")
        approx = registry.approx_size_mb if registry else None

        def verify(p: Path) -> Path:
            return verify_checkpoint_file(p, expected_size=expected_size, sha256=sha256, approx_size_mb=approx)

        folder = cache / f"url-{hashlib.sha256(value.encode()).hexdigest()[:16]}"
        return Acquired(_cache_hit(folder, verify) or _staged_download(folder, _http_fetch(value, name, quiet), verify))

    if kind == "drive-file":
        registry = _registry_source(model_id, drive_id=value)
        approx = registry.approx_size_mb if registry else None

        def verify(p: Path) -> Path:
            return verify_checkpoint_file(p, expected_size=expected_size, sha256=sha256, approx_size_mb=approx,
                                          drive_id=value)

        folder = cache / f"drive-{value}"
        file_name = registry.file_name if registry else ""
        return Acquired(_cache_hit(folder, verify) or _staged_download(
            folder, lambda staging: gdown_download_file(value, staging, quiet=quiet, file_name=file_name), verify))
    return _acquire_from_drive_folder(value, cache / f"drive-folder-{value}", model_id=model_id, protocol=protocol,
                                      expected_size=expected_size, sha256=sha256, quiet=quiet)


def _acquire_from_drive_folder(folder_id: str, folder: Path, *, model_id: str | None, protocol: int | None,
                               expected_size: int | None, sha256: str | None, quiet: bool) -> Acquired:
    """The model's file from a Drive folder: chosen among the files already cached when one fits (verified;
    evicted if bad), else from the folder's listing, and only that file downloaded, verified and cached under its
    path inside the folder (the path tells the protocol)."""
    def verify(p: Path, drive_id: str | None = None) -> Path:
        return verify_checkpoint_file(p, expected_size=expected_size, sha256=sha256, drive_id=drive_id)

    cached = [p for p in folder.rglob("*") if p.is_file() and ".partial-" not in p.as_posix()] \
        if folder.is_dir() else []
    cached_rel = _candidates_in([p.relative_to(folder).as_posix() for p in cached], model_id)
    if cached_rel:
        try:
            path, chosen = _choose([(folder / rel, rel) for rel in cached_rel], model_id, protocol, str(folder))
        except AcquireError:
            pass  # the listing may hold the file this protocol needs
        else:
            hit = _verified_or_evicted(path, verify)
            if hit is not None:
                return Acquired(hit, chosen)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".partial-", dir=folder) as listing_dir:
        entries = gdown_list_folder(folder_id, Path(listing_dir), quiet=quiet)
    if entries is None:  # an old gdown: download the whole folder, then choose
        return _download_whole_folder(folder_id, folder, model_id=model_id, protocol=protocol, verify=verify,
                                      quiet=quiet)
    by_path = {rel: file_id for file_id, rel in entries}
    candidates = _candidates_in(list(by_path), model_id)
    if not candidates:
        listing = ", ".join(sorted(by_path)[:10]) or "nothing"
        raise AcquireError(f"the Drive folder {folder_id} holds no checkpoint for {model_id or 'this model'} "
                           f"(it holds {listing}); set CHECKPOINT to the file's path or Drive id.")
    path, chosen = _choose([(folder / rel, rel) for rel in candidates], model_id, protocol,
                           f"the Drive folder {folder_id}")
    rel = path.relative_to(folder).as_posix()
    file_id = by_path[rel]
    return Acquired(_staged_download(
        path.parent, lambda staging: gdown_download_file(file_id, staging, quiet=quiet, file_name=path.name),
        lambda p: verify(p, file_id), name=path.name), chosen)


def _download_whole_folder(folder_id: str, folder: Path, *, model_id: str | None, protocol: int | None, verify,
                           quiet: bool) -> Acquired:
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder))
    try:
        content = gdown_download_folder(folder_id, staging / "content", quiet=quiet)
        path, chosen = _pick_in_folder(content, model_id, protocol)
        verify(path)
        final = folder / path.relative_to(content)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, final)
        return Acquired(final, chosen)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
