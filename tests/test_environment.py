"""helpers.environment: Kaggle detection, default paths, and the GPU support report (with a faked CUDA)."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from helpers import environment as env


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delenv(env.BATCH_ENV_VAR, raising=False)


def _fake_ipython_kernel(monkeypatch) -> None:
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))


def test_kaggle_detection(monkeypatch):
    assert env.kaggle_run_type() is None and not env.is_kaggle()
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    assert env.kaggle_run_type() == "Batch" and env.is_kaggle()
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "")
    assert not env.is_kaggle()


def test_is_interactive_rules(monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not env.is_interactive()  # plain python: nobody answers widgets
    _fake_ipython_kernel(monkeypatch)
    assert env.is_interactive()  # a Jupyter kernel outside Kaggle
    assert not env.is_interactive(batch=True)
    monkeypatch.setenv(env.BATCH_ENV_VAR, "1")  # what helpers.batch exports before papermill starts
    assert not env.is_interactive()
    monkeypatch.delenv(env.BATCH_ENV_VAR)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    assert not env.is_interactive()  # Save & Run All, even inside a kernel
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert env.is_interactive()
    monkeypatch.setenv(env.BATCH_ENV_VAR, "true")
    assert not env.is_interactive()
    monkeypatch.delenv(env.BATCH_ENV_VAR)
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not env.is_interactive()  # `python script.py` in a Kaggle Interactive session: no widgets


def test_default_paths_on_and_off_kaggle(monkeypatch, tmp_path):
    kaggle_root, repo = tmp_path / "kaggle", tmp_path / "repo"
    assert env.default_output_dir(kaggle_root, repo) == repo / "outputs"
    assert env.default_cache_dir(kaggle_root, repo) == repo / ".cache"
    assert env.default_input_roots(kaggle_root, repo) == []
    (repo / "data").mkdir(parents=True)
    assert env.default_input_roots(kaggle_root, repo) == [repo / "data"]

    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert env.default_input_roots(kaggle_root, repo) == []  # /kaggle/input missing: nothing to search
    (kaggle_root / "input").mkdir(parents=True)
    assert env.default_input_roots(kaggle_root, repo) == [kaggle_root / "input"]
    assert env.default_output_dir(kaggle_root, repo) == kaggle_root / "working" / "outputs"
    cache = env.default_cache_dir(kaggle_root, repo)
    assert kaggle_root in cache.parents and (kaggle_root / "working") not in cache.parents


@pytest.mark.parametrize("capability, arch_list, supported", [
    ((7, 5), ["sm_75", "sm_80"], True),
    ((8, 6), ["sm_80"], True),  # same major, newer minor runs the sm_80 cubin
    ((8, 9), ["sm_80", "sm_86"], True),
    ((9, 0), ["sm_80", "compute_80"], True),  # PTX is JIT-compiled for newer GPUs
    ((6, 0), ["sm_75", "sm_80", "compute_90"], False),  # P100 on current torch
    ((12, 0), ["sm_80", "sm_90"], False),
    ((7, 0), ["sm_75"], False),
])
def test_arch_supported(capability, arch_list, supported):
    assert env._arch_supported(capability, arch_list) is supported


def test_environment_report_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = env.environment_report()
    assert report["torch"] == torch.__version__ and report["python"].count(".") == 2
    assert report["cuda_available"] is False and report["gpu_count"] == 0 and report["gpus"] == []
    assert report["warnings"] == []  # CPU off Kaggle is a choice, not a problem
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    report = env.environment_report()
    assert len(report["warnings"]) == 1 and "CPU" in report["warnings"][0]
    assert env.RECOMMENDED_KAGGLE_ACCELERATOR in report["warnings"][0]
    assert "WARNING 1" in env.format_environment(report)


def test_environment_report_unsupported_gpu(monkeypatch):
    gpus = [types.SimpleNamespace(name="Tesla P100-PCIE-16GB", total_memory=16 * 1024**3, major=6, minor=0),
            types.SimpleNamespace(name="Tesla T4", total_memory=15 * 1024**3, major=7, minor=5)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: gpus[i])
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_86", "sm_90"])
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    report = env.environment_report()
    assert report["gpu_count"] == 2
    p100, t4 = report["gpus"]
    assert p100 == {"index": 0, "name": "Tesla P100-PCIE-16GB", "memory_gb": 16.0, "capability": "sm_60",
                    "supported": False, "tf32": False}
    assert t4["supported"] is True and t4["capability"] == "sm_75" and t4["tf32"] is False  # TF32 needs sm_80
    warning = report["warnings"][0]
    assert "P100" in warning and "sm_60" in warning and '"GPU T4 x2"' in warning
    assert not any("Tesla T4" in w for w in report["warnings"])
    frame = env.environment_frame(report)
    assert "NOT SUPPORTED" in frame.loc["gpu 0", "value"] and "supported" in frame.loc["gpu 1", "value"]
    text = env.format_environment(report)
    assert "Tesla T4" in text and "WARNING 1" in text


def test_environment_report_says_which_gpus_have_tf32(monkeypatch):
    gpus = [types.SimpleNamespace(name="NVIDIA A100-SXM4-40GB", total_memory=40 * 1024**3, major=8, minor=0),
            types.SimpleNamespace(name="NVIDIA L4", total_memory=22 * 1024**3, major=8, minor=9)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: gpus[i])
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_86", "sm_90"])
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)
    report = env.environment_report()
    assert [g["tf32"] for g in report["gpus"]] == [True, True]
    assert [g["capability"] for g in report["gpus"]] == ["sm_80", "sm_89"] and report["cudnn_version"] == 91000
    assert ", TF32, supported" in env.environment_frame(report).loc["gpu 0", "value"]
