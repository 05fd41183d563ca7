"""The crop equals the official one, OpenCV 4.x `warpAffine` on uint8, with zero differing values.

The reference is the official code path (`helpers.crop_check.official_crop`, which the run-time crop check uses
too): `cv2.getAffineTransform` from the three float32 box points, `cv2.warpAffine(..., flags=cv2.INTER_LINEAR)`
(constant-0 border) on the BGR image, then RGB.
Images: generated JPEGs (both real Human3.6M frame sizes) and a real photograph that nobody here made
(matplotlib's bundled `grace_hopper.jpg`).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import matplotlib
import numpy as np
import pytest
import torch

from helpers import crop_cache, crop_check, images, pipeline
from helpers.__main__ import main as helpers_main
from helpers.pipeline import crop_images, flip_images, pad_batch

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

REAL_PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
SIZES = [(256, 256), (384, 288), (64, 48), (7, 5)]  # (H, W): 3DMPPE, Integral challenge, small, odd


def test_the_reference_is_opencv_4():
    assert cv2.__version__.split(".")[0] == "4", "OpenCV 5 changed warpAffine; the official crop is OpenCV 4.x's"


def official_crop(bgr: np.ndarray, box, out_hw) -> np.ndarray:
    """The official 3DMPPE/Integral crop of a BGR uint8 image, returned as RGB (H, W, 3) uint8 (the run-time crop
    check's reference, `crop_check.official_crop`, which calls OpenCV as the official code does)."""
    return crop_check.official_crop(cv2, bgr, box, out_hw)


def boxes_for(height: int, width: int, count: int, seed: int) -> np.ndarray:
    """Border-crossing on every side, tiny (< 1 px), huge, square and not, fractional; plus fixed cases."""
    rng = np.random.default_rng(seed)
    w = np.exp(rng.uniform(np.log(0.3), np.log(4 * max(height, width)), count))
    h = np.where(rng.random(count) < 0.5, w, np.exp(rng.uniform(np.log(0.3), np.log(4 * max(height, width)), count)))
    x = rng.uniform(-w, width + 1.0)
    y = rng.uniform(-h, height + 1.0)
    fixed = [[0, 0, width, height], [-0.5, -0.5, width + 1, height + 1], [10.25, 20.75, 0.4, 0.6],
             [-3 * width, -3 * height, 7 * width, 7 * height], [width - 2.5, height - 2.5, 30, 30],
             [width * 0.25, height * 0.1, width * 0.5, width * 0.5 * 4 / 3]]
    return np.concatenate([np.stack([x, y, w, h], 1), np.array(fixed, dtype=np.float64)])


def _jpeg(rng, height: int, width: int, quality: int) -> bytes:
    """A photo-like test image: smooth gradients, edges and noise, encoded by OpenCV."""
    yy, xx = np.mgrid[0:height, 0:width]
    bgr = np.stack([(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)),
                    ((xx // 37 + yy // 23) % 2) * 200 + 20], -1).astype(np.int32)
    bgr += rng.integers(-25, 26, bgr.shape)
    ok, data = cv2.imencode(".jpg", np.clip(bgr, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def _decode_both(data: bytes):
    ours = images.decode_rgb(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return ours, bgr


def _assert_equal_crops(image_rgb: torch.Tensor, bgr: np.ndarray, boxes: np.ndarray, out_hw) -> None:
    for start in range(0, len(boxes), 32):
        part = boxes[start:start + 32]
        ours = crop_images([image_rgb] * len(part), part, out_hw).permute(0, 2, 3, 1).numpy()
        for box, got in zip(part, ours):
            expected = official_crop(bgr, box, out_hw)
            differing = int((got != expected).sum())
            assert differing == 0, f"{differing} values differ from OpenCV for box {box.tolist()} at {out_hw}"


@pytest.mark.parametrize("height, width, quality", [(1002, 1000, 95), (1000, 1000, 75), (61, 47, 90)])
def test_generated_jpegs_decode_like_opencv_and_crop_exactly(height, width, quality):
    rng = np.random.default_rng(height + quality)
    ours, bgr = _decode_both(_jpeg(rng, height, width, quality))
    assert np.array_equal(ours.permute(1, 2, 0).numpy(), bgr[:, :, ::-1])  # baseline JPEG: identical pixels
    for k, out_hw in enumerate(SIZES):
        _assert_equal_crops(ours, bgr, boxes_for(height, width, 12, seed=k), out_hw)


def test_a_real_photograph_crops_exactly():
    data = REAL_PHOTO.read_bytes()
    ours, bgr = _decode_both(data)
    # Crop from OpenCV's own pixels, so the test is about the crop whatever the decoders do with this file.
    rgb = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)
    height, width = bgr.shape[:2]
    for k, out_hw in enumerate(SIZES):
        _assert_equal_crops(rgb, bgr, boxes_for(height, width, 60 if k < 2 else 20, seed=100 + k), out_hw)


def test_mixed_size_and_padded_batches_crop_like_single_images():
    rng = np.random.default_rng(5)
    decoded = [_decode_both(_jpeg(rng, h, w, 90)) for h, w in ((1002, 1000), (1000, 1000), (80, 120))]
    boxes = np.array([[-40.5, 300.2, 500.0, 500.0], [600.0, -20.0, 450.0, 450.0], [10.0, 5.0, 70.0, 93.3]])
    expected = np.stack([official_crop(bgr, box, (256, 256)) for (_, bgr), box in zip(decoded, boxes)])
    as_list = crop_images([rgb for rgb, _ in decoded], boxes, (256, 256))
    padded = crop_images(pad_batch([rgb for rgb, _ in decoded]), boxes, (256, 256))
    assert np.array_equal(as_list.permute(0, 2, 3, 1).numpy(), expected)
    assert torch.equal(padded, as_list)


def test_the_flipped_input_is_the_mirror_of_the_official_crop():
    ours, bgr = _decode_both(REAL_PHOTO.read_bytes())
    rgb = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)
    boxes = np.array([[50.3, 80.7, 400.0, 400.0], [-30.0, 200.0, 300.0, 400.0]])
    for out_hw in ((256, 256), (384, 288)):
        crops = crop_images([rgb, rgb], boxes, out_hw)
        for crop, flipped, box in zip(crops, flip_images(crops), boxes):
            expected = cv2.flip(np.ascontiguousarray(official_crop(bgr, box, out_hw)), 1)
            assert np.array_equal(flipped.permute(1, 2, 0).numpy(), expected)
        normalised = pipeline.normalize(crops, "3dmppe")
        assert torch.equal(flip_images(normalised), pipeline.normalize(flip_images(crops), "3dmppe"))


# ---------------------------------------------------------------- python -m helpers crop

def _crop_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helpers", "crop", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])


def test_crop_cli_writes_exactly_the_official_crop(tmp_path):
    out = tmp_path / "crop.png"
    done = _crop_cli(str(REAL_PHOTO), "--box", "-20.5", "100.25", "380", "380", "--size", "384", "288",
                     "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    written = cv2.imread(str(out), cv2.IMREAD_COLOR)[:, :, ::-1]  # PNG: lossless
    bgr = cv2.imread(str(REAL_PHOTO), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    ours = images.read_image(REAL_PHOTO)
    assert np.array_equal(ours.permute(1, 2, 0).numpy(), bgr[:, :, ::-1])  # decoders agree on this photo
    assert np.array_equal(written, official_crop(bgr, [-20.5, 100.25, 380, 380], (384, 288)))


def test_crop_cli_default_size_is_256_in_process(tmp_path, capsys):
    out = tmp_path / "default.png"
    assert helpers_main(["crop", str(REAL_PHOTO), "--box", "100.5", "50.25", "300", "300", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and str(out) in printed[0] and "256x256" in printed[0]
    bgr = cv2.imread(str(REAL_PHOTO), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    written = cv2.imread(str(out), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert np.array_equal(written, official_crop(bgr, [100.5, 50.25, 300, 300], (256, 256)))


# In process (helpers.__main__.main): each subprocess costs ~2 s of Python and torch start-up.
@pytest.mark.parametrize("args, message", [
    (["{missing}", "--box", "0", "0", "10", "10"], "cannot be read"),
    (["{broken}", "--box", "0", "0", "10", "10"], "is not a readable JPEG"),
    (["{photo}", "--box", "0", "0", "0", "10"], "positive W H"),
    (["{photo}", "--box", "0", "0", "10", "-3"], "positive W H"),
    (["{photo}", "--box", "0", "0", "inf", "10"], "finite"),
    (["{photo}", "--box", "nan", "0", "10", "10"], "finite"),
    (["{photo}", "--box", "0", "0", "10", "10", "--size", "0", "256"], "positive H W"),
    (["{photo}", "--box", "0", "0", "10", "10", "--size", "256", "-1"], "positive H W"),
    (["{photo}", "--box", "0", "0", "10", "10", "--out", "{nowhere}"], "does not exist"),
])
def test_crop_cli_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, args, message):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(REAL_PHOTO.read_bytes()[:300])
    names = {"missing": tmp_path / "missing.jpg", "broken": broken, "photo": REAL_PHOTO,
             "nowhere": tmp_path / "no" / "crop.png"}
    args = [a.format(**names) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "crop.png")]
    assert helpers_main(["crop", *args]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not captured.out
    assert sorted(f.name for f in tmp_path.iterdir()) == ["broken.jpg"]  # no PNG, no temporary, no folder


def test_crop_cli_bad_input_through_python_m_exits_2(tmp_path):
    done = _crop_cli(str(tmp_path / "missing.jpg"), "--box", "0", "0", "10", "10", "--out", str(tmp_path / "c.png"))
    assert done.returncode == 2 and "cannot be read" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- the run-time crop check (helpers.crop_check)

@pytest.fixture
def jpeg_set(tmp_path):
    """Ten generated JPEGs at Human3.6M's two frame sizes, with border-crossing boxes, and their crop store."""
    rng = np.random.default_rng(11)
    paths, boxes = [], []
    for i in range(10):
        height = 1002 if i % 2 else 1000
        path = tmp_path / f"frame_{i:02d}.jpg"
        path.write_bytes(_jpeg(rng, height, 1000, 90))
        paths.append(str(path))
        boxes.append(boxes_for(height, 1000, 1, seed=i)[0])
    boxes = np.array(boxes)
    store = crop_cache.ensure_crops(paths, boxes, (256, 256), cache_dir=tmp_path / "cache", num_workers=0,
                                    progress=False)
    return paths, boxes, store


def test_crop_check_finds_the_runs_crops_identical_to_opencv(jpeg_set):
    paths, boxes, store = jpeg_set
    record = crop_check.check_crops(paths, boxes, (256, 256), store.take)
    assert record == {"opencv": cv2.__version__, "images": 8, "decode_identical": True, "crop_identical": True,
                      "max_abs_diff": 0, "skipped": None}
    assert not crop_check.crop_check_failed(record)


def test_crop_check_reports_a_crop_that_differs(jpeg_set):
    paths, boxes, store = jpeg_set

    def one_grey_level_off(positions):
        crops = store.take(positions).astype(np.int16)
        crops[3, 0, 100, 100] += 1 if crops[3, 0, 100, 100] < 255 else -1
        return crops.astype(np.uint8)

    record = crop_check.check_crops(paths, boxes, (256, 256), one_grey_level_off)
    assert record["crop_identical"] is False and record["decode_identical"] is True and record["max_abs_diff"] == 1
    assert crop_check.crop_check_failed(record)


def test_without_opencv_the_check_says_why_and_the_run_goes_on(jpeg_set, monkeypatch, tmp_path):
    from helpers.engine import InferenceConfig, run_inference
    from helpers.models.registry import ModelSpec
    from test_engine import tiny_pose_model

    paths, boxes, _ = jpeg_set
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError
    record = crop_check.check_crops(paths, boxes, (256, 256), lambda p: None)
    assert record["skipped"].startswith("OpenCV (cv2) is not importable") and record["images"] == 0
    assert record["crop_identical"] is None and not crop_check.crop_check_failed(record)
    spec = ModelSpec(model_id="tiny_standin", family="test", variant="t", builder="unused:unused",
                     input_shape=(32, 32), output_shape=(8, 8), depth_dim=8)
    test_set = SimpleNamespace(image_id=np.arange(len(paths)), bbox=boxes, f=np.tile([1145.0, 1144.0], (len(paths), 1)),
                               c=np.tile([500.0, 500.0], (len(paths), 1)))
    result = run_inference(spec, tiny_pose_model(), test_set, paths,
                           InferenceConfig(batch_size=4, device="cpu", num_workers=0, cpu_threads=1, progress=False,
                                           out_dir=tmp_path / "run", cache_dir=tmp_path / "cache32"))
    assert "not importable" in result["crop_check"]["skipped"] and Path(result["predictions_path"]).is_file()


def test_opencv_5_is_not_the_reference(jpeg_set, monkeypatch):
    paths, boxes, store = jpeg_set
    monkeypatch.setattr(cv2, "__version__", "5.0.0")
    record = crop_check.check_crops(paths, boxes, (256, 256), store.take)
    assert record["opencv"] == "5.0.0" and "OpenCV 5 changed warpAffine" in record["skipped"]
    assert crop_check.check_crops(paths, boxes, (256, 256), store.take, count=0)["skipped"].startswith("turned off")
