"""Where am I running? Kaggle detection, default paths and a report of the software and GPUs.

Rules:
- Kaggle is detected by `KAGGLE_KERNEL_RUN_TYPE` ("Interactive" or "Batch"), which every Kaggle kernel sets.
- Interactive means a person can answer widgets: an IPython kernel, outside Kaggle or in a Kaggle Interactive
  session, never a plain `python` process. papermill sets no variable of its own inside the kernel, so a
  headless run cannot be recognised from inside; the runner says so instead, either by exporting `H36M_BATCH=1`
  before starting papermill (the kernel inherits it) or by passing `batch=True`. A Kaggle "Save & Run All"
  (Batch) is never interactive.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pandas as pd

KAGGLE_ROOT = Path("/kaggle")
REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH_ENV_VAR = "H36M_BATCH"
_TRUE_WORDS = {"1", "true", "yes", "on"}
# The Kaggle accelerator to recommend: T4 (sm_75) is in every current torch build, fp16 autocast works there.
RECOMMENDED_KAGGLE_ACCELERATOR = "GPU T4 x2"


def kaggle_run_type() -> str | None:
    """"Interactive" or "Batch" on Kaggle (other non-empty values are passed through), None elsewhere."""
    value = os.environ.get("KAGGLE_KERNEL_RUN_TYPE", "").strip()
    return value or None


def is_kaggle() -> bool:
    return kaggle_run_type() is not None


def _in_ipython_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def is_interactive(batch: bool | None = None) -> bool:
    """True when widgets can be answered. `batch=True` (or `H36M_BATCH=1`) forces False; see the module rule."""
    if batch is None:
        batch = os.environ.get(BATCH_ENV_VAR, "").strip().lower() in _TRUE_WORDS
    if batch:
        return False
    run_type = kaggle_run_type()
    if run_type is not None and run_type.lower() != "interactive":
        return False
    return _in_ipython_kernel()  # a plain `python script.py`, even in a Kaggle session, shows no widgets


def default_input_roots(kaggle_root: Path = KAGGLE_ROOT, repo_root: Path = REPO_ROOT) -> list[Path]:
    """Folders to search for data and checkpoints: `/kaggle/input` on Kaggle, else `<repo>/data`; only existing ones."""
    candidate = Path(kaggle_root) / "input" if is_kaggle() else Path(repo_root) / "data"
    return [candidate] if candidate.is_dir() else []


# The folders of an output folder besides one per model: the batch's executed notebooks (and under them the
# notebooks `batch --model-file` writes for family files), and the consolidated report.
RUNS_SUBDIR = "runs"
OWN_NOTEBOOKS_SUBDIR = f"{RUNS_SUBDIR}/notebooks"
REPORT_SUBDIR = "report"


def default_output_dir(kaggle_root: Path = KAGGLE_ROOT, repo_root: Path = REPO_ROOT) -> Path:
    """`/kaggle/working/outputs` on Kaggle (kept after the session), else `<repo>/outputs`. Not created here."""
    return Path(kaggle_root) / "working" / "outputs" if is_kaggle() else Path(repo_root) / "outputs"


def default_cache_dir(kaggle_root: Path = KAGGLE_ROOT, repo_root: Path = REPO_ROOT) -> Path:
    """Downloaded checkpoints: `/kaggle/temp/h36m_cache` on Kaggle (writable, not part of the saved 20 GB output
    in `/kaggle/working`), else `<repo>/.cache` (git-ignored). Not created here."""
    return Path(kaggle_root) / "temp" / "h36m_cache" if is_kaggle() else Path(repo_root) / ".cache"


def _arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch build compiled for `arch_list` has kernels for a GPU of `capability`.

    A cubin for sm_XY runs on sm_XZ with Z >= Y (same major); PTX (compute_XY) is JIT-compiled for any newer GPU.
    """
    major, minor = capability
    for arch in arch_list:
        prefix, _, digits = arch.partition("_")
        if not digits.isdigit() or len(digits) < 2:
            continue
        a_major, a_minor = int(digits[:-1]), int(digits[-1])
        if prefix == "sm" and a_major == major and a_minor <= minor:
            return True
        if prefix == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _version(module_name: str) -> str | None:
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    return getattr(module, "__version__", None)


def environment_report() -> dict:
    """Versions, CUDA/cuDNN, every GPU (name, memory, compute capability, supported) and plain-language warnings."""
    import torch

    cuda_available = bool(torch.cuda.is_available())
    arch_list = list(torch.cuda.get_arch_list()) if cuda_available else []
    gpus = []
    warnings: list[str] = []
    for index in range(torch.cuda.device_count() if cuda_available else 0):
        props = torch.cuda.get_device_properties(index)
        capability = (int(props.major), int(props.minor))
        supported = _arch_supported(capability, arch_list)
        gpus.append({
            "index": index,
            "name": props.name,
            "memory_gb": round(props.total_memory / 1024**3, 2),
            "capability": f"sm_{capability[0]}{capability[1]}",
            "supported": supported,
            "tf32": capability >= (8, 0),  # TF32 tensor cores: Ampere (sm_80) and newer
        })
        if not supported:
            warnings.append(
                f"GPU {index} ({props.name}, sm_{capability[0]}{capability[1]}) is not supported by this torch "
                f"{torch.__version__} build (it has kernels for {' '.join(arch_list) or 'no GPU architecture'}): "
                "CUDA calls will fail. On Kaggle, open Settings > Accelerator and choose "
                f"\"{RECOMMENDED_KAGGLE_ACCELERATOR}\"; elsewhere install a torch build that supports this GPU.")
    if is_kaggle() and not gpus:
        warnings.append(
            "No GPU is available: everything runs on the CPU, which takes hours for the full test set. "
            f"Open Settings > Accelerator and choose \"{RECOMMENDED_KAGGLE_ACCELERATOR}\", or set a small image limit.")
    cudnn = None
    if cuda_available:
        try:
            cudnn = torch.backends.cudnn.version()
        except RuntimeError as exc:  # torch refuses cuDNN >= 9.11 on GPUs below sm_75 (e.g. P100)
            warnings.append(f"cuDNN cannot be used on this machine: {exc}")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "kaggle": is_kaggle(),
        "kaggle_run_type": kaggle_run_type(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "cuda_available": cuda_available,
        "cuda_version": torch.version.cuda,
        "cudnn_version": cudnn,
        "torch_arch_list": arch_list,
        "gpu_count": len(gpus),
        "gpus": gpus,
        "warnings": warnings,
    }


def environment_frame(report: dict) -> pd.DataFrame:
    """The report as a two-column table (item, value); one row per GPU and per warning."""
    rows = [(key, report[key]) for key in (
        "python", "platform", "cpu_count", "kaggle", "kaggle_run_type", "torch", "torchvision", "numpy",
        "cuda_available", "cuda_version", "cudnn_version", "gpu_count") if key in report]
    if report.get("torch_arch_list"):
        rows.append(("torch_arch_list", " ".join(report["torch_arch_list"])))
    for gpu in report.get("gpus", []):
        state = "supported" if gpu["supported"] else "NOT SUPPORTED by this torch build"
        tf32 = {True: ", TF32", False: ", no TF32"}.get(gpu.get("tf32"), "")
        rows.append((f"gpu {gpu['index']}", f"{gpu['name']}, {gpu['memory_gb']} GB, {gpu['capability']}{tf32}, {state}"))
    for i, warning in enumerate(report.get("warnings", []), 1):
        rows.append((f"WARNING {i}", warning))
    return pd.DataFrame(rows, columns=["item", "value"]).set_index("item")


def format_environment(report: dict) -> str:
    """Aligned text, warnings last and marked."""
    frame = environment_frame(report)
    width = max(len(str(k)) for k in frame.index)
    return "\n".join(f"{str(k):<{width}}  {v}" for k, v in frame["value"].items())
