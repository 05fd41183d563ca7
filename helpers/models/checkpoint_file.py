"""Reading a checkpoint FILE safely: what is on disk, around the unpickling that `safe_pickle` does.

- `check_checkpoint_file` is the one pass of per-file checks, shared by `read_checkpoint` and
  `helpers.acquire.verify_checkpoint_file`: the path exists and is an extracted torch-zip folder or a regular
  file (FIFOs and devices are never opened), its content is a format this loader reads (HTML pages saved in
  place of a checkpoint, such as Google Drive's quota page, are explained), its zip directory or tar member list
  is sane, and its size and sha256 are what the caller expects;
- formats are sniffed from content, whatever the extension (`sniff_bytes`, `sniff_format`);
- tar archives are read in memory after refusing unsafe member names; nothing is extracted to disk;
- archives are refused before anything is inflated when their declared sizes are out of proportion to the file
  (zip bombs, compressed-tar bombs, sparse tar members); members have a size limit checked before reading;
- the files of an extracted folder must be regular files, not links.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from .safe_pickle import (_REDOWNLOAD_ADVICE, MAX_PICKLE_BYTES, CheckpointError, NoFileno, PickleScan, StorageDecl,
                          _short, load_plain, load_with_torch, scan_pickle, show_key)

_SHA_CHUNK = 1 << 20  # 1 MB
_MIN_SIZE_FRACTION = 0.5  # a file under half the released file's approximate size is truncated

# Hostile-input limits for archives (those for pickles are in safe_pickle).
MAX_ARCHIVE_MEMBERS = 10_000
# torch.save stores members uncompressed; a re-zipped or gzipped checkpoint of float weights deflates by < 2x.
# Anything declaring more than this many times its compressed size (plus some slack) is refused as a bomb.
MAX_INFLATION_RATIO = 100
_INFLATION_SLACK = 16 << 20


# --------------------------------------------------------------------------------------------------
# Format sniffing
# --------------------------------------------------------------------------------------------------
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_PICKLE_PROTO = b"\x80"
DRIVE_QUOTA_PHRASES = (
    "too many users have viewed or downloaded this file recently",
    "quota exceeded",
    "download quota",
)
_DRIVE_SCAN_PHRASES = ("virus scan warning", "can't scan this file for viruses", "download_warning")


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text[:2048]


def html_page_problem(head: bytes) -> str:
    """Explain an HTML page saved in place of a checkpoint (Drive quota, virus-scan page, error page)."""
    text = head.decode("utf-8", "replace").lower()
    if any(p in text for p in DRIVE_QUOTA_PHRASES):
        what = ("a Google Drive quota page (\"Too many users have viewed or downloaded this file recently\"; "
                "it clears within 24 h)")
    elif any(p in text for p in _DRIVE_SCAN_PHRASES):
        what = "Google Drive's 'cannot scan this file for viruses' confirmation page"
    elif "accounts.google.com" in text or "sign in" in text:
        what = "a Google sign-in page (the file is not shared publicly, or the Drive id is wrong)"
    else:
        what = "an HTML page"
    return f"this is {what}, not a checkpoint"


def sniff_format(path: str | os.PathLike) -> str:
    """Content-based format of a checkpoint path, whatever its extension.

    One of "torch-zip", "torch-zip-folder", "tar", "torch-legacy", "html", "empty", "folder", "not-a-file",
    "numpy", "safetensors", "json", "unknown".
    """
    p = Path(path)
    if p.is_dir():
        return "torch-zip-folder" if _find_extracted_root(p) is not None else "folder"
    if not stat.S_ISREG(p.stat().st_mode):
        return "not-a-file"  # FIFOs and devices are never opened: a FIFO would block, /dev/zero never ends
    with open(p, "rb") as f:
        head = f.read(4096)
    return sniff_bytes(head, p)


def _is_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then the JSON header
    return len(head) >= 10 and head[8:10] == b'{"' and 2 <= int.from_bytes(head[:8], "little") < (100 << 20)


def sniff_bytes(head: bytes, path: Path | None = None) -> str:
    """Format from a file's first bytes (see `sniff_format`); `path` lets old-style tars be recognised.

    Besides the readable formats, recognises what is often saved by mistake: "numpy" (.npy), "safetensors",
    "json"; see `format_problem`."""
    if not head:
        return "empty"
    if head.startswith(_ZIP_MAGIC) or head.startswith(_EMPTY_ZIP_MAGIC):
        return "torch-zip"
    if _looks_like_html(head):
        return "html"
    if head.startswith((_GZIP_MAGIC, _BZIP2_MAGIC, _XZ_MAGIC)):
        return "tar"  # compressed; whether it really holds a tar is checked when it is opened
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(_PICKLE_PROTO):
        return "torch-legacy"
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    if _is_safetensors(head):
        return "safetensors"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"{", b"[")):
        return "json"
    try:  # pre-POSIX tars have no "ustar" magic; tarfile checks the header checksum
        if path is not None and tarfile.is_tarfile(path):
            return "tar"
    except (OSError, tarfile.TarError):
        pass
    return "unknown"


_OTHER_FORMATS = {
    "numpy": "a numpy .npy array, not a torch checkpoint",
    "safetensors": ("a safetensors file; this loader reads the official torch checkpoints only (torch zip, tar, "
                    "legacy torch file, extracted folder). Use the released .pth/.tar file"),
    "json": "a JSON or text file, not a checkpoint (an API error message or a config saved in its place?)",
}


class CheckpointFormatError(CheckpointError):
    """A file whose content is no checkpoint format this loader reads: `format` is what `sniff_bytes` found
    ("empty", "html", "json", ...), `head` its first bytes, for callers that word their own advice (a Drive page)."""

    def __init__(self, message: str, fmt: str, head: bytes):
        super().__init__(message)
        self.format, self.head = fmt, head


def format_problem(fmt: str, head: bytes, where: str) -> CheckpointFormatError:
    """The error for a file whose sniffed format (`sniff_bytes`) cannot be read as a checkpoint."""
    if fmt == "empty":
        message = f"{where} is empty (0 bytes): the download failed or was interrupted. " + _REDOWNLOAD_ADVICE
    elif fmt == "html":
        message = f"{where}: {html_page_problem(head)}. " + _REDOWNLOAD_ADVICE
    elif fmt in _OTHER_FORMATS:
        message = f"{where} is {_OTHER_FORMATS[fmt]}. " + _REDOWNLOAD_ADVICE
    else:
        message = (f"{where} is not a checkpoint format this loader knows (first bytes {head[:16]!r}); "
                   "expected a torch zip (PK\\x03\\x04), a tar, or an extracted torch-zip folder "
                   "holding data.pkl. " + _REDOWNLOAD_ADVICE)
    return CheckpointFormatError(message, fmt, head)


# --------------------------------------------------------------------------------------------------
# Torch zips
# --------------------------------------------------------------------------------------------------
def _open_zip(source, where: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{where} is a truncated or corrupt zip ({_short(str(e), 200)}). "
                              + _REDOWNLOAD_ADVICE) from None


def _read_zip_member(zf: zipfile.ZipFile, name: str, where: str, *, limit: int | None = None) -> bytes:
    """One member's bytes, its declared size checked against `limit` BEFORE inflating."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{where} lacks {name}: the file is incomplete. " + _REDOWNLOAD_ADVICE) from None
    if limit is not None and info.file_size > limit:
        raise CheckpointError(f"{where}: {name} declares {info.file_size:,} bytes, over the {limit:,}-byte limit for "
                              "it; refused without inflating it. This is not a checkpoint.")
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError, NotImplementedError) as e:
        # RuntimeError: encrypted member; NotImplementedError: unknown compression method
        raise CheckpointError(f"{where}: cannot read {name} ({type(e).__name__}: {_short(str(e), 160)}). "
                              + _REDOWNLOAD_ADVICE) from None


def _is_unsafe_member(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return (p.is_absolute() or ".." in p.parts or bool(re.match(r"^[A-Za-z]:", name))
            or any(ord(c) < 32 for c in name))


def _check_inflation(declared: int, stored: int, where: str, what: str) -> None:
    if declared > MAX_INFLATION_RATIO * stored + _INFLATION_SLACK:
        raise CheckpointError(
            f"{where}: {what} declares {declared:,} bytes from {stored:,} stored, more than {MAX_INFLATION_RATIO}x; "
            "refused as a decompression bomb before inflating it. This is not a checkpoint (torch.save does not "
            "compress).")


def _record_size_problem(key: str, size: int, decl: StorageDecl, where: str) -> CheckpointError:
    return CheckpointError(f"{where}: storage data/{key} holds {size:,} bytes, but its pickle declares "
                           f"{decl.numel:,} {decl.type_name} elements ({decl.nbytes:,} bytes): the checkpoint is "
                           "truncated or corrupt. " + _REDOWNLOAD_ADVICE)


def check_torch_zip(source, where: str) -> tuple[str, PickleScan]:
    """Validate a torch zip: its directory (refusing unsafe, duplicate or link members, encrypted members, bombs,
    TorchScript archives and other zips), its data.pkl (`scan_pickle`) and the size of every storage record the
    pickle declares. Returns the root folder (e.g. 'snapshot_83.pth', 'archive') and the scan."""
    with _open_zip(source, where) as zf:
        infos = zf.infolist()
        root = _check_zip_directory(infos, where)
        scan = scan_pickle(_read_zip_member(zf, f"{root}/data.pkl", where, limit=MAX_PICKLE_BYTES), where)
        sizes = {i.filename: i.file_size for i in infos}
        for key, decl in scan.storages.items():
            size = sizes.get(f"{root}/data/{key}")
            if size is None:
                raise CheckpointError(f"{where} lacks data/{key}, a storage its pickle declares: the file is "
                                      "incomplete. " + _REDOWNLOAD_ADVICE)
            if size != decl.nbytes:
                raise _record_size_problem(key, size, decl, where)
    return root, scan


def _check_zip_directory(infos: list[zipfile.ZipInfo], where: str) -> str:
    names = [i.filename for i in infos]
    if len(names) > MAX_ARCHIVE_MEMBERS:
        raise CheckpointError(f"{where} is a zip with {len(names):,} members (over {MAX_ARCHIVE_MEMBERS:,}); "
                              "this is not a torch checkpoint.")
    bad = [n for n in names if _is_unsafe_member(n)]
    if bad:
        raise CheckpointError(f"{where} has unsafe member names ({', '.join(show_key(n) for n in bad[:3])}): absolute "
                              "paths, '..' or control characters are refused. This is not a torch checkpoint.")
    duplicates = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
    if duplicates:
        raise CheckpointError(f"{where} has duplicate member names ({', '.join(map(show_key, duplicates[:3]))}); "
                              "which copy a reader takes is ambiguous, so the file is refused. "
                              + _REDOWNLOAD_ADVICE)
    links = [i.filename for i in infos if stat.S_ISLNK(i.external_attr >> 16)]
    if links:
        raise CheckpointError(f"{where} holds symbolic-link entries ({', '.join(map(show_key, links[:3]))}); "
                              "a torch checkpoint has none. Refused.")
    encrypted = [i.filename for i in infos if i.flag_bits & 0x1]
    if encrypted:
        raise CheckpointError(f"{where} has encrypted members ({', '.join(map(show_key, encrypted[:3]))}); "
                              "a torch checkpoint has none. " + _REDOWNLOAD_ADVICE)
    for info in infos:
        _check_inflation(info.file_size, info.compress_size, where, f"member {show_key(info.filename)}")
    roots = {n.split("/", 1)[0] for n in names}
    root = next(iter(roots)) if len(roots) == 1 else None
    if root is not None and any(n.startswith((f"{root}/code/", f"{root}/constants.pkl")) for n in names):
        raise CheckpointError(f"{where} is a TorchScript archive (torch.jit.save): it contains code, which this "
                              "loader never runs. Use the released state-dict checkpoint, or export one with "
                              "torch.save(model.state_dict(), path) where you trust the archive.")
    if root is None or f"{root}/data.pkl" not in names:
        if names and all(n.endswith(".npy") and "/" not in n for n in names):
            kind = "a numpy .npz archive"
        elif "[Content_Types].xml" in names:
            kind = "an Office document (docx/xlsx/pptx)"
        else:
            kind = f"a zip but not a torch checkpoint: expected one root folder holding data.pkl, found roots " \
                   f"{[show_key(r) for r in sorted(roots)[:5]]}"
        raise CheckpointError(f"{where} is {kind}. " + _REDOWNLOAD_ADVICE)
    return root


def _zip_in_memory(root: str, pickle_bytes: bytes, records: Mapping[str, Any],
                   extras: Mapping[str, bytes]) -> io.BytesIO:
    """A torch zip built in memory from the parts of an extracted folder (Kaggle unpacks `X.tar` into
    `X/snapshot_N.pth/`), so that `torch.load` reads it like the zip it was. `records`: key -> a callable
    returning the record's bytes (read one at a time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(f"{root}/data.pkl", pickle_bytes)
        for name, data in extras.items():
            zf.writestr(f"{root}/{name}", data)
        for key, read in records.items():
            zf.writestr(f"{root}/data/{key}", read())
    buffer.seek(0)
    return buffer


# --------------------------------------------------------------------------------------------------
# Legacy (pre-1.6) torch files: five pickles, then every storage's element count and bytes
# --------------------------------------------------------------------------------------------------
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _BoundedReader:
    """Reads from a binary file, refusing to go more than `limit` bytes past where it started (a pickle scan of a
    hostile legacy file never runs through gigabytes)."""

    def __init__(self, f, limit: int, where: str):
        self._f, self._end, self._where = f, f.tell() + limit, where

    def _check(self, data: bytes) -> bytes:
        if self._f.tell() > self._end:
            raise CheckpointError(f"{self._where}: a pickle longer than {MAX_PICKLE_BYTES:,} bytes; a checkpoint's "
                                  "is well under 1 MB. This is not a checkpoint.")
        return data

    def _room(self, n: int) -> int:
        room = max(0, self._end - self._f.tell() + 1)  # one byte past the end: enough to notice it
        return room if n < 0 else min(n, room)

    def read(self, n: int = -1) -> bytes:
        return self._check(self._f.read(self._room(n)))

    def readline(self, n: int = -1) -> bytes:
        return self._check(self._f.readline(self._room(n)))

    def tell(self) -> int:
        return self._f.tell()


def _next_pickle(f, where: str) -> tuple[PickleScan, bytes]:
    """Scan the pickle at the file's position (at most MAX_PICKLE_BYTES); returns the scan and its bytes."""
    start = f.tell()
    scan = scan_pickle(_BoundedReader(f, MAX_PICKLE_BYTES, where), where)
    end = f.tell()
    f.seek(start)
    return scan, f.read(end - start)


def check_legacy_file(f, size: int, where: str) -> PickleScan:
    """Validate a legacy torch file (a binary file; `size` its length) as thoroughly as a zip: the magic-number,
    protocol and system-info pickles; the object pickle (`scan_pickle`); the storage-key list (exactly the
    storages the object declares); then, for each key in order, its 8-byte element count (which must equal the
    declared one) and its bytes, all inside the file. A truncated file fails here, before anything is read."""
    f.seek(0)
    magic, protocol, sys_info = (load_plain(_next_pickle(f, where)[1], where) for _ in range(3))
    if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
        raise CheckpointError(f"{where} starts like a pickle but is not a torch checkpoint (magic number or protocol "
                              "version is wrong). " + _REDOWNLOAD_ADVICE)
    if not isinstance(sys_info, dict) or not isinstance(sys_info.get("little_endian"), bool):
        raise CheckpointError(f"{where} is malformed: its system-info record is not what torch.save writes. "
                              + _REDOWNLOAD_ADVICE)
    byteorder = "little" if sys_info["little_endian"] else "big"
    scan, _ = _next_pickle(f, where)
    keys = load_plain(_next_pickle(f, where)[1], where)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys) and len(set(keys)) == len(keys)
            and set(keys) == set(scan.storages)):
        raise CheckpointError(f"{where} is malformed: its list of storages does not match the storages its pickle "
                              "declares. " + _REDOWNLOAD_ADVICE)
    for key in keys:
        decl = scan.storages[key]
        count = f.read(8)
        if len(count) < 8 or f.tell() + decl.nbytes > size:
            raise CheckpointError(f"{where} is truncated: storage {key} ({decl.numel:,} {decl.type_name} elements) "
                                  f"ends past the end of the file ({size:,} bytes). " + _REDOWNLOAD_ADVICE)
        stored = int.from_bytes(count, byteorder, signed=True)
        if stored != decl.numel:
            raise CheckpointError(f"{where}: storage {key} holds {stored:,} elements, but its pickle declares "
                                  f"{decl.numel:,}: the checkpoint is corrupt. " + _REDOWNLOAD_ADVICE)
        f.seek(decl.nbytes, os.SEEK_CUR)
    return scan


def _check_legacy_path(path: Path, size: int, where: str) -> PickleScan:
    with open(path, "rb") as f:
        return check_legacy_file(f, size, where)


def _load_legacy(f, where: str, map_location):
    return load_with_torch(NoFileno(f), where, map_location)


# --------------------------------------------------------------------------------------------------
# Extracted torch-zip folders
# --------------------------------------------------------------------------------------------------
def _find_extracted_root(folder: Path) -> Path | None:
    """`folder` itself or its only sub-folder holding `data.pkl` (Kaggle may unpack `X.tar` to `X/snapshot_N.pth/`)."""
    def holds_pickle(d: Path) -> bool:  # a linked data.pkl counts, so that it is refused by name, not ignored
        return (d / "data.pkl").is_file() or (d / "data.pkl").is_symlink()

    if holds_pickle(folder):
        return folder
    roots = [d for d in sorted(folder.iterdir()) if d.is_dir() and holds_pickle(d)]
    return roots[0] if len(roots) == 1 else None


def _folder_file_size(path: Path, where: str, *, limit: int | None = None) -> int:
    """The size of a file of an extracted folder, which must be a regular file, not a link (a link could pull any
    file of this machine into the weights), and hold at most `limit` bytes."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{where} lacks {path.parent.name}/{path.name}: the extracted folder is incomplete. "
                              + _REDOWNLOAD_ADVICE) from None
    if stat.S_ISLNK(mode) or not stat.S_ISREG(mode):
        raise CheckpointError(f"{where}: {path.name} is {'a symbolic link' if stat.S_ISLNK(mode) else 'not a file'}; "
                              "an extracted checkpoint holds regular files only. Refused.")
    size = path.stat().st_size
    if limit is not None and size > limit:
        raise CheckpointError(f"{where}: {path.name} has {size:,} bytes, over the {limit:,}-byte limit; refused.")
    return size


def _folder_file(path: Path, where: str, *, limit: int | None = None) -> bytes:
    """A file of an extracted folder, checked by `_folder_file_size` before it is read."""
    _folder_file_size(path, where, limit=limit)
    return path.read_bytes()


_FOLDER_EXTRAS = ("version", "byteorder")  # small records torch reads besides data.pkl and data/


def _check_folder(root: Path, where: str) -> PickleScan:
    """data.pkl scanned, and every storage it declares a regular file of exactly its size under data/."""
    scan = scan_pickle(_folder_file(root / "data.pkl", where, limit=MAX_PICKLE_BYTES), where)
    for key, decl in scan.storages.items():
        size = _folder_file_size(root / "data" / key, where)
        if size != decl.nbytes:
            raise _record_size_problem(key, size, decl, where)
    for name in _FOLDER_EXTRAS:
        if (root / name).exists() or (root / name).is_symlink():
            _folder_file_size(root / name, where, limit=64)
    return scan


def _load_folder(root: Path, scan: PickleScan, where: str, map_location):
    pickle_bytes = _folder_file(root / "data.pkl", where, limit=MAX_PICKLE_BYTES)
    if scan_pickle(pickle_bytes, where).storages != scan.storages:  # changed since it was checked
        raise CheckpointError(f"{where} changed while it was read; read it again.")
    extras = {name: _folder_file(root / name, where, limit=64) for name in _FOLDER_EXTRAS if (root / name).exists()}
    extras.setdefault("version", b"3\n")

    def record(key: str):
        def read() -> bytes:
            data = _folder_file(root / "data" / key, where)
            if len(data) != scan.storages[key].nbytes:
                raise _record_size_problem(key, len(data), scan.storages[key], where)
            return data
        return read

    buffer = _zip_in_memory(root.name, pickle_bytes, {k: record(k) for k in scan.storages}, extras)
    return load_with_torch(buffer, where, map_location)


# --------------------------------------------------------------------------------------------------
# Tar archives
# --------------------------------------------------------------------------------------------------
def _tar_members(tf: tarfile.TarFile, file_size: int, where: str) -> list[tarfile.TarInfo]:
    """Every member, read header by header so that a bomb (a small compressed file declaring huge members) or an
    endless member list is refused before it is decompressed; unsafe names, links, devices, FIFOs, sparse and
    duplicate members are refused."""
    budget = MAX_INFLATION_RATIO * file_size + _INFLATION_SLACK
    members: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    try:
        while (member := tf.next()) is not None:
            members.append(member)
            name = PurePosixPath(member.name).as_posix()
            if _is_unsafe_member(member.name) or not (member.isfile() or member.isdir()):
                raise CheckpointError(f"{where} has unsafe members ({show_key(member.name)}): absolute paths, '..', "
                                      "links, devices and FIFOs are refused; nothing was extracted.")
            if member.issparse():
                raise CheckpointError(f"{where} has a sparse member ({show_key(member.name)}, {member.size:,} bytes "
                                      "declared); a checkpoint archive has none. Refused.")
            if member.isfile() and name in seen:
                raise CheckpointError(f"{where} holds {show_key(member.name)} twice; which copy is meant is "
                                      "ambiguous, so the archive is refused. " + _REDOWNLOAD_ADVICE)
            seen.add(name)
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise CheckpointError(f"{where} has over {MAX_ARCHIVE_MEMBERS:,} members; this is not a checkpoint "
                                      "archive.")
            _check_inflation(member.offset_data + member.size, file_size, where, "the archive")
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{where} is a truncated or corrupt archive ({_short(str(e), 200)}). "
                              + _REDOWNLOAD_ADVICE) from None
    if tf.offset > budget:
        _check_inflation(tf.offset, file_size, where, "the archive")
    return members


def open_tar(path: Path, where: str) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]]:
    """Open a (possibly compressed) tar and check every member header; see `_tar_members`."""
    try:
        tf = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{where} is a truncated or corrupt archive ({_short(str(e), 200)}). "
                              + _REDOWNLOAD_ADVICE) from None
    try:
        return tf, _tar_members(tf, path.stat().st_size, where)
    except BaseException:
        tf.close()
        raise


@dataclass
class _TarCheckpoint:
    """The one checkpoint inside a tar, checked: its format and root, and how `torch.load` reads it."""

    format: str  # "torch-zip", "torch-legacy" or "torch-zip-folder"
    name: str  # its path inside the tar
    zip_root: str | None
    source: Any  # a binary file object torch.load reads


def _tar_checkpoint(path: Path, where: str, *, for_reading: bool) -> _TarCheckpoint:
    """Find and check the one checkpoint inside a tar, in memory. Archives nested in the tar are not opened (one
    level only). With `for_reading`, an extracted folder is assembled into an in-memory zip for torch.load."""
    tf, members = open_tar(path, where)

    def member_bytes(member: tarfile.TarInfo, inner_where: str, *, limit: int | None = None) -> bytes:
        if limit is not None and member.size > limit:
            raise CheckpointError(f"{inner_where}: {show_key(member.name)} has {member.size:,} bytes, over the "
                                  f"{limit:,}-byte limit; refused.")
        try:
            return tf.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            raise CheckpointError(f"{inner_where} is truncated or corrupt ({_short(str(e), 160)}). "
                                  + _REDOWNLOAD_ADVICE) from None

    with tf:
        files = {PurePosixPath(m.name).as_posix(): m for m in members if m.isfile()}
        folder_roots = sorted(str(PurePosixPath(n).parent) for n in files if PurePosixPath(n).name == "data.pkl")
        candidates: list[tuple[str, str]] = [(r, "torch-zip-folder") for r in folder_roots]
        nested: list[str] = []
        for name, member in files.items():
            if any(r == "." or name.startswith(f"{r}/") for r in folder_roots):
                continue  # part of an extracted folder
            fmt = sniff_bytes(_member_head(tf, member, where))
            if fmt in ("torch-zip", "torch-legacy"):
                candidates.append((name, fmt))
            elif fmt == "tar":
                nested.append(name)
        if len(candidates) != 1:
            listing = ", ".join(show_key(m.name) for m in members[:8])
            found = ", ".join(show_key(c) for c, _ in candidates[:8])
            problem = f"{len(candidates)} checkpoints ({found})" if candidates else "no checkpoint"
            hint = (f" It holds a nested archive ({', '.join(map(show_key, nested[:3]))}); archives inside archives "
                    "are not opened: extract the inner one and pass it." if nested and not candidates else "")
            raise CheckpointError(f"{where} is a tar holding {problem}; expected exactly one torch zip, legacy torch "
                                  f"file or extracted folder.{hint} Members: {listing}")
        name, fmt = candidates[0]
        inner_where = f"{where} > {name}"
        if fmt == "torch-zip-folder":
            prefix = "" if name == "." else f"{name}/"
            pickle_bytes = member_bytes(files[f"{prefix}data.pkl"], inner_where, limit=MAX_PICKLE_BYTES)
            scan = scan_pickle(pickle_bytes, inner_where)
            for key, decl in scan.storages.items():
                member = files.get(f"{prefix}data/{key}")
                if member is None:
                    raise CheckpointError(f"{inner_where} lacks data/{key}, a storage its pickle declares: the "
                                          "archive is incomplete. " + _REDOWNLOAD_ADVICE)
                if member.size != decl.nbytes:
                    raise _record_size_problem(key, member.size, decl, inner_where)
            root = PurePosixPath(name).name if name != "." else "archive"
            source = None
            if for_reading:
                extras = {n: member_bytes(files[f"{prefix}{n}"], inner_where, limit=64)
                          for n in _FOLDER_EXTRAS if f"{prefix}{n}" in files}
                extras.setdefault("version", b"3\n")
                records = {k: (lambda m=files[f"{prefix}data/{k}"]: member_bytes(m, inner_where))
                           for k in scan.storages}
                source = _zip_in_memory(root, pickle_bytes, records, extras)
            return _TarCheckpoint(fmt, name, root if name != "." else None, source)
        buffer = io.BytesIO(member_bytes(files[name], inner_where))
    if fmt == "torch-zip":
        root, _ = check_torch_zip(buffer, inner_where)
        return _TarCheckpoint(fmt, name, root, buffer)
    check_legacy_file(buffer, len(buffer.getbuffer()), inner_where)
    return _TarCheckpoint(fmt, name, None, buffer)


def _member_head(tf: tarfile.TarFile, member: tarfile.TarInfo, where: str) -> bytes:
    try:
        return tf.extractfile(member).read(4096)
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{where} is truncated or corrupt ({_short(str(e), 160)}). "
                              + _REDOWNLOAD_ADVICE) from None


# --------------------------------------------------------------------------------------------------
# One pass of per-file checks, then reading
# --------------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (streamed in 1 MB chunks); of a folder: of its files' relative paths and bytes, sorted."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_symlink() or q.is_file()) if p.is_dir() else [p]
    for q in files:
        if p.is_dir():
            h.update(q.relative_to(p).as_posix().encode() + b"\0")
            if q.is_symlink():  # hash where it points, never what: it may point at a device or a huge file
                h.update(b"-> " + os.readlink(q).encode("utf-8", "surrogateescape") + b"\0")
                continue
        with open(q, "rb") as f:
            for chunk in iter(lambda: f.read(_SHA_CHUNK), b""):
                h.update(chunk)
    return h.hexdigest()


def _require_regular_file(path: Path, where: str) -> None:
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise CheckpointError(f"{where} is {kind}, not a checkpoint file; it was not opened. Pass the path of the "
                              "checkpoint file or of its extracted folder.")


@dataclass(frozen=True)
class FileCheck:
    """A checkpoint path that passed `check_checkpoint_file`, and what was learnt about it."""

    path: Path  # as given
    format: str  # "torch-zip", "tar", "torch-legacy" or "torch-zip-folder"
    zip_root: str | None  # a torch zip's root folder (inside a tar too); a folder's data.pkl folder's name
    size: int | None  # bytes of the file; None for a folder
    data_root: Path | None = None  # for a folder: the one holding data.pkl (`path` or its only sub-folder)
    scan: PickleScan | None = field(default=None, repr=False, compare=False)  # what the pickle declares

    @functools.cached_property
    def sha256(self) -> str:
        """sha256 of the file, or of the folder holding data.pkl (`file_sha256`): computed once, when first asked."""
        return file_sha256(self.data_root or self.path)


def check_checkpoint_file(path: str | os.PathLike, *, expected_size: int | None = None,
                          approx_size_mb: float | None = None, sha256: str | None = None) -> FileCheck:
    """Every check a checkpoint path gets before anything in it is unpickled, in one pass (used by
    `read_checkpoint` and by `helpers.acquire.verify_checkpoint_file`). Raises `CheckpointError` saying what to do.

    The path must exist and be either an extracted torch-zip folder (itself or its only sub-folder holds data.pkl,
    a regular file) or a regular file, never opened otherwise (a FIFO would block, /dev/zero never ends). A file's
    first bytes must be a torch zip, a tar or a legacy torch file (else `CheckpointFormatError`, which explains
    HTML pages such as Google Drive's quota page); it must hold `expected_size` bytes exactly and at least half of
    `approx_size_mb` (less is a truncated download). Then its structure, whatever the format: the zip directory
    or tar member headers are sane, every pickle passes `scan_pickle`, and every storage the pickle declares is
    complete (a zip's or folder's record of exactly its size; a legacy file's element count and bytes, inside the
    file): a truncated or corrupt file fails here. Last, `sha256` if given: the file is hashed only then, or when
    `FileCheck.sha256` is first asked for.
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        if path.is_symlink():
            raise CheckpointError(f"{where} is a symbolic link to a path that does not exist ({os.readlink(path)}).")
        raise CheckpointError(f"checkpoint not found: {path}. Check the path (a notebook given no checkpoint "
                              "searches /kaggle/input and the registry's downloads).")
    if path.is_dir():
        root = _find_extracted_root(path)
        if root is None:
            raise CheckpointError(f"{where} is a folder without data.pkl: pass a checkpoint file, or the extracted "
                                  "torch-zip folder (e.g. snapshot_83.pth/ holding data.pkl, data/, version).")
        check = FileCheck(path, "torch-zip-folder", root.name, None, root, scan=_check_folder(root, where))
    else:
        check = _check_file(path, where, expected_size, approx_size_mb)
    if sha256 and check.sha256 != sha256.lower():
        raise CheckpointError(f"{path}: sha256 of the extracted folder does not match {sha256}" if check.data_root
                              else f"{path}: sha256 mismatch (expected {sha256}); the file is corrupt or a different "
                              "version.")
    return check


def _check_file(path: Path, where: str, expected_size: int | None, approx_size_mb: float | None) -> FileCheck:
    _require_regular_file(path, where)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4096)
    fmt = sniff_bytes(head, path)
    if fmt in ("empty", "html"):
        raise format_problem(fmt, head, where)
    if expected_size is not None and size != expected_size:
        raise CheckpointError(f"{path} has {size:,} bytes, expected exactly {expected_size:,}: truncated or a "
                              "different file. Delete it and download again.")
    if approx_size_mb and size < _MIN_SIZE_FRACTION * approx_size_mb * 1e6:
        raise CheckpointError(f"{path} has {size / 1e6:.1f} MB but the released file is about {approx_size_mb} MB: "
                              "the download is truncated. Try again.")
    if fmt == "torch-zip":
        root, scan = check_torch_zip(path, where)
        return FileCheck(path, fmt, root, size, scan=scan)
    if fmt == "torch-legacy":
        return FileCheck(path, fmt, None, size, scan=_check_legacy_path(path, size, where))
    if fmt == "tar":  # header by header: bombs, links, devices and unsafe names are refused, nothing is extracted
        inner = _tar_checkpoint(path, where, for_reading=False)
        return FileCheck(path, fmt, inner.zip_root, size)
    raise format_problem(fmt, head, where)


@dataclass
class RawCheckpoint:
    """What `read_checkpoint` found: the unpickled top-level object and where it came from."""

    obj: Any
    format: str
    path: str | None = None
    zip_root: str | None = None
    sha256: str | None = None


def read_checkpoint(path_or_state_dict, *, map_location="cpu") -> RawCheckpoint:
    """Read any supported checkpoint safely; no pickled code ever runs. A path gets `check_checkpoint_file` once
    (structure and every storage record), then `torch.load(weights_only=True)` reads it: a torch zip by its path,
    a legacy file through a stream, an extracted folder (or a tar's content) assembled into an in-memory zip. The
    file is hashed once, after it was read."""
    if isinstance(path_or_state_dict, Mapping):
        return RawCheckpoint(obj=path_or_state_dict, format="state-dict")
    check = check_checkpoint_file(path_or_state_dict)
    where, fmt, root = str(check.path), check.format, check.zip_root
    if fmt == "torch-zip-folder":
        obj = _load_folder(check.data_root, check.scan, where, map_location)
    elif fmt == "torch-zip":
        obj = load_with_torch(where, where, map_location)
    elif fmt == "torch-legacy":
        with open(check.path, "rb") as f:
            obj = _load_legacy(f, where, map_location)
    else:  # "tar": read it again, in memory, and load what is inside
        inner = _tar_checkpoint(check.path, where, for_reading=True)
        inner_where = f"{where} > {inner.name}"
        obj = (_load_legacy(inner.source, inner_where, map_location) if inner.format == "torch-legacy"
               else load_with_torch(inner.source, inner_where, map_location))
        fmt = f"tar>{inner.format}"
    return RawCheckpoint(obj, fmt, where, root, check.sha256)
