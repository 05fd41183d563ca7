"""helpers.reproduce: REPRODUCE.md is written with result.json (same call, atomically), states what the number
rests on, lists every recorded check generically, and prints a papermill command that reads back exactly the
recorded parameters. (That the command repeats a run's predictions bit for bit is tested in test_notebooks.py.)"""
from __future__ import annotations

import re
import shlex

import pytest

from helpers import reproduce
from helpers.results import write_result
from test_report import make_result


def _notebook_result(tmp_path, **values) -> dict:
    result = make_result(model_id="convnextpose_S", base=52.0)
    result["checkpoint"] = {"path": str(tmp_path / "ConvNeXtPose_S.tar"), "sha256": "ab" * 32, "format": "torch-zip",
                            "epoch": 24, "remaps": [], "source": "drive:1OriQPQ3uRY8MWPHP9KnwPaKawzrontqH"}
    result["environment"] = {"python": "3.11.7", "torch": "2.14.1", "torchvision": "0.29.1", "numpy": "2.4.6",
                             "gpus": [{"index": 0, "name": "Tesla T4", "memory_gb": 14.7, "capability": "sm_75"}]}
    result["settings"]["demo_data"] = False
    result["ci95"] = {"level": 0.95, "method": "percentile bootstrap over recordings", "resamples": 10000, "seed": 0,
                      "headline": [51.2, 52.9], "metrics": {}}
    result["precision_check"] = {"requested": "fp32", "used": "fp32", "samples": 0, "max_abs_diff_heatmap": None,
                                 "max_abs_diff_mm": None, "mean_abs_diff_mm": None, "nonfinite_batches": 0,
                                 "fell_back": False}
    out = tmp_path / "out dir's"  # a space and a quote: the command must quote them
    result["parameters"] = {"notebook": "notebooks/convnextpose.ipynb", "values": {
        "MODEL": "convnextpose", "VARIANT": "S", "CHECKPOINT": result["checkpoint"]["path"], "PROTOCOL": 2,
        "FLIP_TEST": True, "BATCH_SIZE": 64, "PRECISION": "fp32", "DEVICE": "cuda", "WORLD_SIZE": 2,
        "IMAGE_LIMIT": None, "OUTPUT_DIR": str(out), "DEMO": False, "SEED": 0, "CACHE_DIR": str(tmp_path / "c"),
        **values}}
    return result


def _command_args(card: str) -> list[str]:
    block = re.search(r"```bash\n(.*?)```", card, re.S).group(1)
    lines = block.strip().split("\n", 1)
    assert lines[0].startswith("mkdir -p ")
    return shlex.split(lines[1].replace("\\\n", " "))


def test_card_is_written_with_the_result_and_states_what_the_number_rests_on(tmp_path):
    result = _notebook_result(tmp_path)
    path = tmp_path / "convnextpose_S" / "result.json"
    path.parent.mkdir()
    files = write_result(path, result)
    card = files["reproduce"].read_text()
    assert files["reproduce"] == path.with_name("REPRODUCE.md")
    assert not list(path.parent.glob(".*"))  # atomic: no temporary file left
    for expected in ("**MPJPE = 52.00 mm**", "95 % interval [51.20, 52.90] mm", "ConvNeXtPose_S.tar", "ab" * 32,
                     "| epoch | 24 |", "drive:1OriQPQ3uRY8MWPHP9KnwPaKawzrontqH", "real Human3.6M data",
                     "test subjects S9, S11, every 64th frame", "| samples evaluated | 8695 of 8695 |",
                     "| missing | none |", "| batch_size | 64 |", "| device | cuda:0 |", "| precision | fp32 |",
                     "### `precision_check`", "| torch | 2.14.1 |", "Tesla T4", "sha256sum"):
        assert expected in card, expected


def test_command_passes_every_recorded_parameter_with_its_type(tmp_path):
    result = _notebook_result(tmp_path, VARIANT="50")  # a string that looks like a number stays a string
    card = reproduce.render_card(result, tmp_path / "result.json")
    args = _command_args(card)
    assert args[:5] == ["papermill", "notebooks/convnextpose.ipynb",
                        str(tmp_path / "out dir's" / "runs" / "convnextpose_S.reproduce.ipynb"), "-k", "python3"]
    given = {}
    for i in range(5, len(args), 3):
        flag, name, text = args[i:i + 3]
        given[name] = text if flag == "-r" else {"True": True, "False": False, "None": None}.get(text, text)
        if flag == "-p" and text not in ("True", "False", "None"):
            given[name] = int(text)
    assert given == result["parameters"]["values"]
    assert args[args.index("VARIANT") - 1] == "-r"


def test_every_recorded_check_is_listed_without_code_changes(tmp_path):
    result = _notebook_result(tmp_path)
    result["device_check"] = {"device": "cuda", "max_abs_diff_mm": 0.0004, "passed": True}
    result["crop_check"] = {"images": 16, "identical": True}
    result["decode_check"] = None
    card = reproduce.render_card(result, tmp_path / "result.json")
    for block in ("precision_check", "device_check", "crop_check", "decode_check"):
        assert f"### `{block}`" in card, block
    assert "| max_abs_diff_mm | 0.0004 |" in card and "| identical | True |" in card


def test_demo_partial_and_rescored_results(tmp_path):
    demo = make_result(model_id="posenet", base=300.0, weights_kind="random_demo", partial=True)
    demo["settings"]["demo_data"] = True
    demo["annotations"] = {"dir": "/data/annotations", "subjects": [9, 11], "bbox_root_file": None}
    demo["predictions"] = {"file": "/runs/posenet/predictions.npz"}
    card = reproduce.render_card(demo, tmp_path / "rescored.json")
    assert "RANDOM DEMO WEIGHTS" in card and "GENERATED demo data" in card and "Partial run" in card
    assert "| samples evaluated | 500 of 8695 (PARTIAL) |" in card
    command = re.search(r"```bash\n(.*?)\n```", card, re.S).group(1)
    assert shlex.split(command) == ["python", "-m", "helpers", "rescore", "--annotations", "/data/annotations",
                                    "--predictions", "/runs/posenet/predictions.npz", "--protocol", "2",
                                    "--allow-partial", "--out", str((tmp_path / "rescored.json").resolve())]
    assert reproduce.card_path(tmp_path / "rescored.json") == tmp_path / "rescored.REPRODUCE.md"
    # a root result made on a detector's boxes is rescored on the same boxes
    root = make_result("root", model_id="rootnet", base=120.0)
    root["conventions"]["bbox_source"] = "detector"
    root["conventions"]["sources"] = {"boxes": {"source": "detector", "file": "/data/bbox_human36m_output.json"},
                                      "detector_file": {"file": "/data/bbox_human36m_output.json"}}
    root["annotations"] = {"dir": "/data/annotations", "subjects": [9, 11], "bbox_root_file": None}
    root["predictions"] = {"file": "/runs/rootnet/predictions.npz"}
    command = re.search(r"```bash\n(.*?)\n```", reproduce.render_card(root, tmp_path / "result.json"), re.S).group(1)
    assert "--detector-boxes /data/bbox_human36m_output.json" in command and "--bbox-root" not in command


def test_an_invalid_result_writes_no_card(tmp_path):
    result = _notebook_result(tmp_path)
    del result["headline"]
    with pytest.raises(ValueError):
        write_result(tmp_path / "result.json", result)
    assert not (tmp_path / "REPRODUCE.md").exists() and not (tmp_path / "result.json").exists()


def test_demo_data_with_a_given_checkpoint_asks_for_that_checkpoint_not_for_random_weights(tmp_path):
    """Your own weights smoke-tested on the generated data: the card repeats the generated data from SEED and asks
    for the same checkpoint file; only random demo weights are 'made again'."""
    given = reproduce.render_card(_notebook_result(tmp_path, DEMO=True), tmp_path / "result.json")
    assert "the generated data are made again from SEED 0" in given and "random weights" not in given
    assert "sha256sum" in given
    demo = _notebook_result(tmp_path, DEMO=True)
    del demo["parameters"]["values"]["CHECKPOINT"]
    card = reproduce.render_card(demo, tmp_path / "result.json")
    assert "the generated data and the random weights are made again" in card and "sha256sum" not in card
