"""Crop cache (helpers.crop_cache): each image decoded and cropped once per rule, resumable, byte-identical."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import crop_cache, images
from helpers.crop_cache import ensure_crops
from helpers.engine import ImageReadError, run_inference
from helpers.pipeline import crop_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_engine import NUM_SAMPLES, POSE_SPEC, _config, dataset, tiny_pose_model  # noqa: E402,F401  (fixture)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


@pytest.fixture
def decode_count(monkeypatch):
    """Counts every CPU JPEG decode in this process (the tests run the loader without worker processes)."""
    calls = []
    original = images.decode_rgb

    def spy(data, device="cpu"):
        calls.append(torch.device(device).type)
        return original(data, device=device)

    monkeypatch.setattr(images, "decode_rgb", spy)
    monkeypatch.setattr(crop_cache, "decode_rgb", spy)
    return calls


def _build(paths, boxes, cache, **kw):
    return ensure_crops(paths, boxes, (32, 32), cache_dir=cache, num_workers=0, progress=False, **kw)


def test_crops_are_the_exact_crops_and_a_second_build_decodes_nothing(dataset, tmp_path, decode_count):
    test_set, paths = dataset
    first = _build(paths, test_set.bbox, tmp_path)
    assert (first.hits, first.misses, first.images_decoded) == (0, NUM_SAMPLES, NUM_SAMPLES)
    assert len(decode_count) == NUM_SAMPLES
    expected = crop_images([images.read_image(p) for p in paths], test_set.bbox, (32, 32)).numpy()
    assert np.array_equal(first.read(0, NUM_SAMPLES), expected)
    assert np.array_equal(first.take([5, 2, 13]), expected[[5, 2, 13]])
    decode_count.clear()
    again = _build(paths, test_set.bbox, tmp_path)
    assert (again.hits, again.misses, again.images_decoded) == (NUM_SAMPLES, 0, 0) and decode_count == []
    assert again.key == first.key and np.array_equal(again.read(3, 11), expected[3:11])
    manifest = (Path(again.folder) / "manifest.json").read_text()
    assert again.key in manifest and '"input_shape": [\n    32,\n    32\n  ]' in manifest


def test_the_key_follows_every_part_of_the_rule(dataset, tmp_path):
    test_set, paths = dataset
    base = crop_cache.crop_cache_key(paths, test_set.bbox, (32, 32))
    moved = test_set.bbox.copy()
    moved[3, 0] += 1e-9
    assert crop_cache.crop_cache_key(paths, moved, (32, 32)) != base  # the boxes (annotations, box source, rule)
    assert crop_cache.crop_cache_key(paths, test_set.bbox, (32, 24)) != base  # the crop size
    assert crop_cache.crop_cache_key(paths, test_set.bbox, (32, 32), decode="gpu") != base  # the decoder
    assert crop_cache.crop_cache_key(paths, test_set.bbox, (32, 32), rule={"bbox_source": "detected"}) != base
    assert crop_cache.crop_cache_key(paths[::-1], test_set.bbox, (32, 32)) != base  # which image is which
    assert crop_cache.crop_cache_key(list(paths), test_set.bbox.copy(), (32, 32)) == base


def test_an_interrupted_build_resumes_with_its_finished_chunks(dataset, tmp_path, monkeypatch, decode_count):
    test_set, paths = dataset
    monkeypatch.setattr(crop_cache, "CHUNK_SIZE", 4)  # 4 chunks: 4, 4, 4, 2
    original = crop_cache.read_image
    seen = []

    def interrupted(path, decode=True):
        seen.append(path)
        if len(seen) == 9:
            raise KeyboardInterrupt
        return original(path, decode=decode)

    monkeypatch.setattr(crop_cache, "read_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_crops(paths, test_set.bbox, (32, 32), cache_dir=tmp_path, num_workers=0, progress=False, batch_size=4)
    folder = next((tmp_path / "crops").iterdir())
    assert sorted(p.name for p in folder.glob("chunk_*.npy")) == ["chunk_00000.npy", "chunk_00001.npy"]
    assert not list(folder.glob(".*part*")) and not list(folder.glob(".chunk*"))  # nothing half-written
    monkeypatch.setattr(crop_cache, "read_image", original)
    decode_count.clear()
    store = ensure_crops(paths, test_set.bbox, (32, 32), cache_dir=tmp_path, num_workers=0, progress=False)
    assert (store.hits, store.misses, store.images_decoded) == (8, NUM_SAMPLES - 8, NUM_SAMPLES - 8)
    fresh = _build(paths, test_set.bbox, tmp_path / "fresh")
    assert np.array_equal(store.read(0, NUM_SAMPLES), fresh.read(0, NUM_SAMPLES))


def test_a_damaged_chunk_is_computed_again(dataset, tmp_path):
    test_set, paths = dataset
    store = _build(paths, test_set.bbox, tmp_path)
    chunk = Path(store.folder) / "chunk_00000.npy"
    chunk.write_bytes(chunk.read_bytes()[:200])  # truncated (e.g. edited by hand, a full disk)
    again = _build(paths, test_set.bbox, tmp_path)
    assert again.misses == NUM_SAMPLES and np.array_equal(again.read(0, NUM_SAMPLES), store.read(0, NUM_SAMPLES))


def test_cached_and_uncached_runs_give_byte_identical_predictions(dataset, tmp_path):
    test_set, paths = dataset
    model = tiny_pose_model()
    cold = run_inference(POSE_SPEC, model, test_set, paths, _config(tmp_path / "a", cache_dir=tmp_path / "cache"))
    warm = run_inference(POSE_SPEC, model, test_set, paths, _config(tmp_path / "b", cache_dir=tmp_path / "cache"))
    assert cold["crop_cache"]["misses"] == NUM_SAMPLES and cold["timing"]["images_decoded"] == NUM_SAMPLES
    assert warm["crop_cache"] == {**cold["crop_cache"], "hits": NUM_SAMPLES, "misses": 0}
    assert warm["timing"]["images_decoded"] == 0
    assert Path(cold["predictions_path"]).read_bytes() != b""
    with np.load(cold["predictions_path"]) as a, np.load(warm["predictions_path"]) as b:
        assert a["coords"].tobytes() == b["coords"].tobytes()


def test_a_corrupt_image_is_named_and_nothing_is_cached_for_its_chunk(tmp_path, dataset):
    test_set, paths = dataset
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(paths[0]).read_bytes()[:100])
    bad = [str(broken)] + [str(p) for p in paths[1:]]
    with pytest.raises(ImageReadError, match="broken.jpg is not a readable JPEG"):
        _build(bad, test_set.bbox, tmp_path / "c")
    assert not list((tmp_path / "c").rglob("chunk_*.npy"))


# ---------------------------------------------------------------- the GPU decoder, simulated on the CPU

@pytest.fixture
def fake_nvjpeg(monkeypatch):
    """The nvjpeg path with the CPU standing in for the GPU: decode_rgb(list, device) decodes each on the CPU,
    optionally off by one grey level at one pixel (what a different IDCT could do)."""
    state = {"offset": 0, "batched_calls": 0}
    original = images.decode_rgb

    def decode(data, device="cpu"):
        if isinstance(data, list):
            state["batched_calls"] += 1
            out = [original(d) for d in data]
            if state["offset"]:
                for im in out:
                    im[0, 0, 0] = (int(im[0, 0, 0]) + state["offset"]) % 256
            return out
        return original(data, device=device)

    monkeypatch.setattr(crop_cache, "decode_rgb", decode)
    monkeypatch.setattr(crop_cache, "_require_cuda", lambda device: None)
    return state


def test_gpu_decoding_is_checked_against_the_cpu_and_recorded(dataset, tmp_path, fake_nvjpeg):
    test_set, paths = dataset
    store = _build(paths, test_set.bbox, tmp_path, decode="gpu")
    check = store.decode_check
    assert check["decoder"] == "nvjpeg" and check["images_compared"] == crop_cache.DECODE_CHECK_IMAGES
    assert check["identical"] is True and check["max_abs_diff_pixels"] == 0 and check["max_abs_diff_crop"] == 0
    assert fake_nvjpeg["batched_calls"] >= 2 and store.decode == "gpu"
    cpu = _build(paths, test_set.bbox, tmp_path, decode="cpu")
    assert cpu.key != store.key and np.array_equal(cpu.read(0, NUM_SAMPLES), store.read(0, NUM_SAMPLES))
    fake_nvjpeg["offset"] = 1
    differing = _build(paths, test_set.bbox, tmp_path / "other", decode="gpu")
    assert differing.decode_check["identical"] is False and differing.decode_check["max_abs_diff_pixels"] == 1


def test_gpu_decoding_needs_cuda(dataset, tmp_path):
    test_set, paths = dataset
    with pytest.raises(ValueError, match="needs a CUDA device"):
        _build(paths, test_set.bbox, tmp_path, decode="gpu")
    with pytest.raises(ValueError, match="decode must be one of"):
        _build(paths, test_set.bbox, tmp_path, decode="nvjpeg")


def test_an_image_whose_size_differs_from_its_annotation_is_an_error_naming_both_sizes(dataset, tmp_path):
    """The boxes are processed with the annotated width and height: a resized copy of the data set must not be
    cropped silently wrong."""
    test_set, paths = dataset
    sizes = np.stack([test_set.height, test_set.width], axis=1)
    store = _build(paths, test_set.bbox, tmp_path / "right", image_sizes=sizes)
    assert store.misses == NUM_SAMPLES
    wrong = sizes.copy()
    wrong[7] = [1000, 1002]
    with pytest.raises(ImageReadError) as err:
        _build(paths, test_set.bbox, tmp_path / "wrong", image_sizes=wrong)
    message = str(err.value)
    assert str(paths[7]) in message and "40x50" in message and "1002x1000" in message
    # nothing of the refused build's chunk was written
    assert not list((tmp_path / "wrong").rglob("chunk_*.npy"))


def test_run_inference_checks_the_decoded_sizes_against_the_annotations(dataset, tmp_path):
    from types import SimpleNamespace

    test_set, paths = dataset
    resized = SimpleNamespace(**{**vars(test_set), "width": np.full(NUM_SAMPLES, 80)})
    with pytest.raises(ImageReadError, match=r"is 40x4[80] \(width x height\) but its annotation says 80x"):
        run_inference(POSE_SPEC, tiny_pose_model(), resized, paths, _config(tmp_path))
