import os

import numpy as np
import pytest

from helpers.atomic import atomic_path, save_npz, write_json


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "result.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("interrupted")
    assert target.read_text().strip() == '{\n  "v": 1\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_written_files_get_normal_permissions_and_npz_keeps_its_name(tmp_path):
    write_json(tmp_path / "a.json", {"x": [1, 2]})
    save_npz(tmp_path / "p.npz", a=np.arange(3))
    mask = os.umask(0)
    os.umask(mask)
    assert (os.stat(tmp_path / "a.json").st_mode & 0o777) == 0o666 & ~mask
    assert np.load(tmp_path / "p.npz")["a"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "p.npz"]


def test_nan_is_refused_rather_than_written_as_invalid_json(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "bad.json", {"v": float("nan")})
    assert not (tmp_path / "bad.json").exists()
