"""helpers.models.checkpoint and helpers.demo_checkpoints: formats, safety, key cleaning, detection, strict
loading, error messages and the `inspect` CLI."""
from __future__ import annotations

import collections
import hashlib
import io
import os
import pickletools
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.__main__ import main as cli_main
from helpers.demo_checkpoints import DEMO_NOTE, write_demo_checkpoints
from helpers.demo_checkpoints import main as demo_main
from helpers.models import list_models, load_checkpoint
from helpers.models.checkpoint import CheckpointError, detect_model, model_shapes, read_state_dict
from helpers.models.checkpoint_file import sniff_format

SMALL = ["convnextpose_XS", "convnextpose_S", "convnextpose_M", "mobilehumanpose_lpski"]
# The demo files these tests use (every model id's is tested in test_checkpoint_real_files.py).
DEMO_MODELS = [*SMALL, "convnextpose_L", "mobilehumanpose_lpwo"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def demos(demo_dir) -> dict[str, Path]:
    return write_demo_checkpoints(demo_dir, DEMO_MODELS, seed=0)


def _network(path: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(path).state_dict


def _zip_root(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        roots = {n.split("/")[0] for n in zf.namelist()}
    assert len(roots) == 1
    return roots.pop()


# ---------------------------------------------------------------------------------------------- demo files
def test_every_demo_checkpoint_is_detected_as_its_model(demos, demo_dir):
    assert sorted(demos) == sorted(DEMO_MODELS) and set(DEMO_MODELS) <= set(list_models())
    for model_id, path in demos.items():
        contents = read_state_dict(path)
        assert detect_model(contents.state_dict).model_id == model_id, model_id
        assert contents.format == "torch-zip" and contents.is_random_demo and contents.epoch == 0
    readme = (demo_dir / "DEMO_CHECKPOINTS.md").read_text()
    assert "random" in readme.lower() and all(m in readme for m in demos)
    assert not [p for p in demo_dir.rglob(".*") if p.name.startswith((".demo-", ".DEMO"))]  # no staging left


def test_demo_layout_is_the_official_one(demos):
    for variant in ("XS", "S", "M", "L"):
        path = demos[f"convnextpose_{variant}"]
        assert path.name == f"ConvNeXtPose_{variant}.tar"
        assert path.read_bytes()[:4] == b"PK\x03\x04"
        assert _zip_root(path) == "snapshot_0.pth"
    raw_keys = _raw_network_keys(demos["convnextpose_L"])
    assert all(k.startswith("module.") for k in raw_keys)
    assert "module.head.deconv_layers_1.0.weight" in raw_keys  # legacy head keys for M and L
    assert "module.head.deconv_layers_1.dwconv.weight" in _raw_network_keys(demos["convnextpose_S"])
    model, info = load_checkpoint(demos["convnextpose_L"])
    assert info.model_id == "convnextpose_L" and info.is_random_demo
    assert any("legacy head keys" in r for r in info.remaps)


def _raw_network_keys(path: Path) -> list[str]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    assert set(obj) == {"epoch", "network", "optimizer", "demo_note"} and obj["demo_note"] == DEMO_NOTE
    return list(obj["network"])


def test_demo_checkpoints_are_deterministic_per_seed(tmp_path):
    a = write_demo_checkpoints(tmp_path / "a", ["convnextpose_XS"], seed=0)["convnextpose_XS"]
    b = write_demo_checkpoints(tmp_path / "b", ["convnextpose_XS"], seed=0)["convnextpose_XS"]
    c = write_demo_checkpoints(tmp_path / "c", ["convnextpose_XS"], seed=1)["convnextpose_XS"]
    sa, sb, sc = _network(a), _network(b), _network(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["backbone.downsample_layers.0.0.weight"], sc["backbone.downsample_layers.0.0.weight"])


def test_demo_cli(tmp_path, capsys):
    assert demo_main([str(tmp_path), "--models", "mobilehumanpose_lpski", "--seed", "3"]) == 0
    assert "RANDOM" in capsys.readouterr().out
    assert (tmp_path / "mobilehumanpose_lpski" / "snapshot_0.pth.tar").is_file()
    with pytest.raises(KeyError, match="unknown model ids"):
        write_demo_checkpoints(tmp_path, ["convnextpose_XXL"])


# ---------------------------------------------------------------------------------------------- formats
def test_formats_tar_folder_legacy_and_plain_state_dict(demos, tmp_path):
    src = demos["convnextpose_XS"]
    reference = _network(src)
    expected_sha = hashlib.sha256(src.read_bytes()).hexdigest()

    _, info = load_checkpoint(src)
    assert (info.format, info.zip_root, info.path) == ("torch-zip", "snapshot_0.pth", str(src))
    assert info.sha256 == expected_sha

    # a real tar holding the .tar-named zip
    tar_path = tmp_path / "bundle.tar"
    with tarfile.open(tar_path, "w") as tf:
        tf.add(src, arcname="weights/ConvNeXtPose_XS.tar")
    _, info = load_checkpoint(tar_path)
    assert (info.model_id, info.format, info.zip_root) == ("convnextpose_XS", "tar>torch-zip", "snapshot_0.pth")

    # a gzipped tar holding an extracted folder
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(src) as zf:
        zf.extractall(folder)
    assert sniff_format(folder) == "torch-zip-folder"
    tgz = tmp_path / "folder.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(folder / "snapshot_0.pth", arcname="snapshot_0.pth")
    model, info = load_checkpoint(tgz)
    assert (info.model_id, info.format) == ("convnextpose_XS", "tar>torch-zip-folder")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())

    # legacy (pre-1.6) serialisation, torch.compile prefixes and a 'state_dict' wrapper
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": {f"_orig_mod.{k}": v for k, v in reference.items()}}, legacy,
               _use_new_zipfile_serialization=False)
    assert sniff_format(legacy) == "torch-legacy"
    _, info = load_checkpoint(legacy)
    assert info.model_id == "convnextpose_XS" and info.format == "torch-legacy" and info.epoch is None
    assert "unwrapped 'state_dict'" in info.remaps and any("_orig_mod." in r for r in info.remaps)

    # a state dict passed in directly
    model, info = load_checkpoint({f"module.{k}": v for k, v in reference.items()}, "convnextpose_XS")
    assert info.format == "state-dict" and info.sha256 is None and info.path is None
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())


def test_optimizer_extras_are_read_without_unsafe_globals(demos, tmp_path):
    """defaultdict and numpy scalars in the optimizer state are allow-listed, in zips and extracted folders."""
    network = _network(demos["convnextpose_XS"])
    optimizer = {"state": collections.defaultdict(dict, {0: {"step": np.float64(12.0)}}),
                 "param_groups": [{"lr": np.float32(0.001), "betas": (0.9, 0.999), "params": [0]}]}
    path = tmp_path / "snapshot_7.pth.tar"
    torch.save({"epoch": np.int64(7), "network": network, "optimizer": optimizer}, path)
    _, info = load_checkpoint(path)
    assert (info.model_id, info.epoch) == ("convnextpose_XS", 7)
    with zipfile.ZipFile(path) as zf:
        zf.extractall(tmp_path / "x")
    _, info = load_checkpoint(tmp_path / "x" / "snapshot_7.pth")
    assert (info.model_id, info.epoch, info.format) == ("convnextpose_XS", 7, "torch-zip-folder")


# ---------------------------------------------------------------------------------------------- bad inputs
def _assert_error(source, *patterns, model_id=None):
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(source, model_id)
    for pattern in patterns:
        assert re.search(pattern, str(exc.value), re.IGNORECASE | re.DOTALL), (pattern, str(exc.value))
    return str(exc.value)


def test_empty_truncated_and_html_files(demos, tmp_path):
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    _assert_error(empty, "empty", "re-download")

    data = demos["convnextpose_XS"].read_bytes()
    truncated = tmp_path / "ConvNeXtPose_XS.tar"
    truncated.write_bytes(data[: len(data) // 2])
    _assert_error(truncated, "truncated or corrupt", "re-download")

    html = tmp_path / "ConvNeXtPose_L.tar"
    html.write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
                    "<body>Google Drive can't scan this file for viruses.</body></html>")
    _assert_error(html, "HTML|virus", "Drive id", "Kaggle dataset")

    quota = tmp_path / "ConvNeXtPose_M.tar"
    quota.write_text("\n  <html><body><p>Sorry, you can't view or download this file at this time.</p>"
                     "<p>Too many users have viewed or downloaded this file recently. Please try accessing the "
                     "file again later.</p></body></html>")
    _assert_error(quota, "quota", "24 h", "Kaggle dataset")

    garbage = tmp_path / "weights.bin"
    garbage.write_bytes(b"\x00\x01not a checkpoint" * 10)
    _assert_error(garbage, "not a checkpoint format")
    _assert_error(tmp_path / "missing.tar", "not found")


class _Evil:
    """Pickles to a call of os.system: loading it unsafely would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _references_os_system(pickle_bytes: bytes) -> bool:
    """The payload really calls os.system (GLOBAL/STACK_GLOBAL of posix/nt system), checked without running it."""
    strings = [arg for op, arg, _ in pickletools.genops(pickle_bytes) if isinstance(arg, str)]
    return any(s in ("posix system", "nt system") for s in strings) or (
        any(s in ("posix", "nt") for s in strings) and "system" in strings)


def test_malicious_pickles_are_refused_and_never_run(demos, tmp_path):
    marker = tmp_path / "PWNED"
    network = _network(demos["convnextpose_XS"])
    path = tmp_path / "snapshot_1.pth.tar"
    torch.save({"epoch": 1, "network": network, "optimizer": _Evil(marker)}, path)
    with zipfile.ZipFile(path) as zf:
        assert _references_os_system(zf.read("snapshot_1.pth/data.pkl"))
        zf.extractall(tmp_path / "unpacked")

    _assert_error(path, "refused", "system")
    folder = tmp_path / "unpacked" / "snapshot_1.pth"
    _assert_error(folder, "refused", "system")
    tar_path = tmp_path / "evil.tar"
    with tarfile.open(tar_path, "w") as tf:
        tf.add(folder, arcname="snapshot_1.pth")
    _assert_error(tar_path, "refused", "system")
    with pytest.raises(CheckpointError):
        read_state_dict(folder)
    assert not marker.exists()


def test_archives_with_escaping_members_are_refused(demos, tmp_path):
    target = tmp_path / "work"
    target.mkdir()
    outside = tmp_path / "escaped.txt"
    payload = b"written outside"

    tar_path = target / "ConvNeXtPose_XS.tar"
    with tarfile.open(tar_path, "w") as tf:
        tf.add(demos["convnextpose_XS"], arcname="ConvNeXtPose_XS.tar")
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    _assert_error(tar_path, "unsafe", r"\.\./escaped")

    zip_path = target / "ConvNeXtPose_S.tar"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("../escaped.txt", payload)
    _assert_error(zip_path, "unsafe", r"\.\./escaped")

    link_tar = target / "link.tar"
    with tarfile.open(link_tar, "w") as tf:
        info = tarfile.TarInfo("snapshot_0.pth")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc"
        tf.addfile(info)
    _assert_error(link_tar, "unsafe")
    assert not outside.exists()
    assert sorted(p.name for p in target.iterdir()) == ["ConvNeXtPose_S.tar", "ConvNeXtPose_XS.tar", "link.tar"]


# ---------------------------------------------------------------------------------------------- key problems
def test_missing_and_unexpected_tensors(demos):
    network = _network(demos["convnextpose_XS"])
    dropped = "backbone.stages.2.3.pwconv1.weight"
    assert dropped in network
    incomplete = {k: v for k, v in network.items() if k != dropped}
    message = _assert_error(incomplete, "closest is convnextpose_XS", rf"missing keys \(1\): {re.escape(dropped)}")
    assert "Nothing was loaded" in message
    _assert_error(incomplete, r"does not match convnextpose_XS", re.escape(dropped), model_id="convnextpose_XS")
    extra = {**network, "head.extra.weight": torch.zeros(3)}
    _assert_error(extra, r"unexpected keys \(1\): head\.extra\.weight", model_id="convnextpose_XS")
    not_tensors = {**network, "head.note": "text"}
    _assert_error(not_tensors, "not tensors", "head.note")


def test_variants_mixed_in_one_state_dict_are_rejected(demos):
    xs, s = _network(demos["convnextpose_XS"]), _network(demos["convnextpose_S"])
    mixed = {**{k: v for k, v in s.items() if k.startswith("backbone.")},
             **{k: v for k, v in xs.items() if k.startswith("head.")}}
    assert set(mixed) == set(s)  # same key names as S, shapes from two variants
    message = _assert_error(mixed, "matches no registry model exactly", "mis-shaped keys", "best matches by shape")
    assert "checkpoint [128" in message and "vs model [256" in message  # both shapes are named
    for model_id in SMALL[:3]:
        _assert_error(mixed, f"does not match {model_id}", model_id=model_id)


def test_wrong_variant_names_the_matching_one(demos):
    message = _assert_error(demos["convnextpose_S"], "does not match convnextpose_M",
                            r"head\.final_layer\.weight checkpoint \[576, 256, 1, 1\] vs model \[1152, 256, 1, 1\]",
                            "match convnextpose_S exactly", model_id="convnextpose_M")
    assert "model_id='convnextpose_S'" in message
    assert "joints" not in message  # 576 = 9·64 must not be read as a joint count when S fits exactly


@pytest.mark.parametrize("model_id, joints", [("convnextpose_S", 17), ("mobilehumanpose_lpski", 21),
                                              ("convnextpose_M", 21)])
def test_other_joint_counts_are_named(demos, model_id, joints):
    network = _network(demos[model_id])
    prefix = "head.final_layer" if model_id.startswith("convnextpose") else "backbone.final_layer"
    depth = {"convnextpose_S": 32, "mobilehumanpose_lpski": 32, "convnextpose_M": 64}[model_id]
    weight, bias = network[f"{prefix}.weight"], network[f"{prefix}.bias"]
    assert weight.shape[0] == 18 * depth
    network[f"{prefix}.weight"] = torch.zeros(joints * depth, *weight.shape[1:])
    network[f"{prefix}.bias"] = torch.zeros(joints * depth)
    pattern = (rf"{re.escape(prefix)} has {joints}·{depth} = {joints * depth} outputs: "
               rf"this checkpoint predicts {joints} joints")
    _assert_error(network, pattern, "needs 18")
    _assert_error(network, pattern, model_id=model_id)
    assert bias.shape == (18 * depth,)


def test_detection_ranks_partial_matches(demos):
    shapes = {k: tuple(v.shape) for k, v in _network(demos["mobilehumanpose_lpwo"]).items()}
    detection = detect_model(shapes)
    assert detection.model_id == "mobilehumanpose_lpwo"
    assert detection.ranking[0].exact and not detection.ranking[1].exact
    # lpski_2021 has the same keys and differs only in decoder shapes: it must rank next
    assert detection.ranking[1].model_id == "mobilehumanpose_lpski_2021"
    assert shapes == model_shapes("mobilehumanpose_lpwo")


def test_unknown_model_id(demos):
    with pytest.raises(KeyError, match="unknown model id"):
        load_checkpoint(demos["convnextpose_XS"], "convnextpose_XXL")


# ---------------------------------------------------------------------------------------------- inspect CLI
def test_inspect_cli_exit_codes(demos, tmp_path, capsys):
    assert cli_main(["inspect", str(demos["convnextpose_M"])]) == 0
    out = capsys.readouterr().out
    assert "convnextpose_M" in out and "snapshot_0.pth" in out and "random demo" in out
    assert hashlib.sha256(demos["convnextpose_M"].read_bytes()).hexdigest() in out

    assert cli_main(["inspect", str(demos["convnextpose_S"]), "--model-id", "convnextpose_M"]) == 1
    out = capsys.readouterr().out
    assert "read OK: 260 tensors; it does not match convnextpose_M (closest: convnextpose_S)" in out
    assert "mis-shaped" in out and "refused" not in out

    partial = {k: v for k, v in _network(demos["convnextpose_XS"]).items() if not k.startswith("head.")}
    path = tmp_path / "backbone_only.pth"
    torch.save({"network": partial}, path)
    assert cli_main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"read OK: {len(partial)} tensors; no known model matches (closest: convnextpose_XS)" in out

    page = tmp_path / "ConvNeXtPose_L.tar"
    page.write_text("<!doctype html><html><body>Too many users have viewed or downloaded this file recently"
                    "</body></html>")
    assert cli_main(["inspect", str(page)]) == 3  # refused to read, told apart from "read, no model matches"
    lines = capsys.readouterr().out.splitlines()
    refusal = [line for line in lines if line.startswith("refused to read: ")]
    assert len(refusal) == 1 and "quota" in refusal[0] and not any(line.startswith("read OK") for line in lines)
    with pytest.raises(SystemExit) as exc:
        cli_main(["inspect"])
    assert exc.value.code == 2
