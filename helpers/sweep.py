"""Snapshot sweeps: every epoch of one training run, evaluated the same way, in one notebook run.

`CHECKPOINT` may name a folder of snapshots (`snapshot_60.pth.tar`, `snapshot_61.pth.tar`, ...) or a glob
(`/kaggle/input/run/snapshot_6*.pth.tar`). `runner.prepare` then returns a `Sweep`: one `runner.Run` per
snapshot, sharing the test set, the image check and the crop cache (each image is decoded and cropped once
for all epochs). Each snapshot is loaded strictly when its turn comes and writes its own folder
`<output_dir>/<model_id>/snapshots/<file stem>/` with `result.json` (with a `snapshot` block: run, epoch,
file) and the per-sample errors; the consolidated report lists the epochs with their intervals, plots error
against epoch and warns that picking the best epoch on the test set is selection bias.
"""
from __future__ import annotations

import dataclasses
import glob
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

GLOB_CHARACTERS = set("*?[")
SNAPSHOT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar", ".ckpt", ".bin")
SWEEP_CSV = "snapshots.csv"
SWEEP_PNG = "snapshots.png"


def _epoch_from_name(path: Path) -> int | None:
    numbers = re.findall(r"\d+", path.name)
    return int(numbers[-1]) if numbers else None


def _stem(path: Path) -> str:
    """The file name without its checkpoint suffix (`snapshot_60.pth.tar` -> `snapshot_60`)."""
    suffix = next((s for s in SNAPSHOT_SUFFIXES if path.name.endswith(s)), "")
    return path.name[:len(path.name) - len(suffix)] if suffix else path.name


def _order(paths) -> list[Path]:
    """By the epoch number in the name (the last number), then by name."""
    return sorted(paths, key=lambda p: (_epoch_from_name(p) is None, _epoch_from_name(p) or 0, p.name))


def snapshot_files(checkpoint: str | None) -> list[Path] | None:
    """The snapshots a CHECKPOINT names when it names several (a glob, or a folder of checkpoint files), ordered
    by epoch; None when it names one checkpoint (a file, an extracted torch-zip folder, a URL, a Drive id)."""
    if checkpoint is None:
        return None
    text = str(checkpoint)
    if GLOB_CHARACTERS & set(text) and "://" not in text:
        found = [Path(p) for p in glob.glob(str(Path(text).expanduser()))]
        return _order(p for p in found if p.is_file() or (p / "data.pkl").is_file())
    folder = Path(text).expanduser()
    if not folder.is_dir() or (folder / "data.pkl").is_file():
        return None
    files = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(SNAPSHOT_SUFFIXES)]
    extracted = [p for p in folder.iterdir() if p.is_dir() and (p / "data.pkl").is_file()]
    found = files + extracted
    return _order(found) if len(found) > 1 or files else None


@dataclasses.dataclass
class Sweep:
    """The runs of one training run's snapshots, driven by the same notebook cells as one `runner.Run`."""

    runs: list  # runner.Run, one per snapshot, in epoch order
    pattern: str  # the CHECKPOINT that named them
    output_dir: Path  # <output_dir>/<model_id>
    files: dict = dataclasses.field(default_factory=dict)  # the sweep's own table and plot, once saved

    @property
    def params(self):
        return self.runs[0].params

    @property
    def model_id(self) -> str:
        return self.runs[0].model_id

    # ------------------------------------------------------------------------------------------ cells
    def environment(self) -> pd.DataFrame:
        return self.runs[0].environment()

    def data_summary(self) -> pd.DataFrame:
        return self.runs[0].data_summary()

    def checkpoint_summary(self) -> pd.DataFrame:
        rows = [(run.snapshot["file"], run.snapshot["epoch"], run.checkpoint_info.get("sha256")) for run in self.runs]
        print(f"{len(self.runs)} snapshots of {self.model_id} ({self.pattern}); each is loaded strictly in its turn")
        return pd.DataFrame(rows, columns=["file", "epoch (from the name)", "sha256 (once loaded)"])

    def infer(self) -> pd.DataFrame:
        """Each snapshot in turn: load it strictly, run it (the crop cache is shared), free it."""
        from tqdm.auto import tqdm

        rows = []
        for run in tqdm(self.runs, desc="snapshots", unit="snapshot"):
            table = run.infer()  # loads the snapshot strictly first
            run.model = None  # the predictions are on disk; keep one model in memory at a time
            rows.append({"epoch": run.snapshot["epoch"], "file": run.snapshot["file"],
                         "images/s": table.loc["images_per_s", "value"] if "images_per_s" in table.index else None,
                         "images decoded": table.loc["images_decoded", "value"]
                         if "images_decoded" in table.index else None})
        return pd.DataFrame(rows).set_index("epoch")

    def evaluate(self) -> pd.DataFrame:
        from . import comparisons

        rows = []
        for run in self.runs:
            run.evaluate()
            result = run.result
            low, high = result["ci95"]["headline"]
            rows.append({"epoch": run.snapshot["epoch"], "metric": result["headline"]["metric"],
                         "value (mm)": result["headline"]["value"], "ci95_low": low, "ci95_high": high})
        frame = pd.DataFrame(rows).set_index("epoch")
        print(f"best epoch on the test set: {frame['value (mm)'].idxmin()}. {comparisons.SELECTION_BIAS_WARNING}")
        return frame

    def per_joint_table(self) -> pd.DataFrame:
        from .report import per_joint_frame

        return pd.DataFrame({run.snapshot["epoch"]: per_joint_frame(run.result).iloc[:, 0] for run in self.runs})

    def save(self) -> Path:
        """Every snapshot's result, then the run's epoch table and plot beside them."""
        from . import comparisons, report
        from .atomic import write_text

        for run in self.runs:
            run.save()
        frame = self.snapshot_table()
        self.files["snapshots_csv"] = write_text(self.output_dir / SWEEP_CSV, frame.to_csv(index=False,
                                                                                            float_format="%.4f"))
        fig = comparisons.plot_snapshots(frame, any(report.is_random_demo(r.result) for r in self.runs))
        try:
            self.files["snapshots_png"] = report.save_figure(fig, self.output_dir / SWEEP_PNG)
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)
        print(f"snapshots: {self.files['snapshots_csv']}")
        return self.files["snapshots_csv"]

    def snapshot_table(self) -> pd.DataFrame:
        from . import comparisons

        items = [SimpleNamespace(name=run.output_dir.relative_to(self.output_dir).as_posix(), result=run.result)
                 for run in self.runs]
        return comparisons.snapshot_frame(items)

    def paper_comparison(self) -> pd.DataFrame:
        return pd.concat({run.snapshot["epoch"]: run.paper_comparison() for run in self.runs}, names=["epoch"])

    def plots(self) -> None:
        from . import comparisons
        from .runner import _display

        if "snapshots_png" in self.files:
            from IPython.display import Image

            _display(Image(filename=str(self.files["snapshots_png"])))
            return
        _display(comparisons.plot_snapshots(self.snapshot_table()))

    def qualitative_samples(self, count: int = 4):
        """The samples of the last snapshot (the one a training run ends with, not the best on the test set)."""
        print(f"qualitative samples of the last snapshot, epoch {self.runs[-1].snapshot['epoch']}")
        return self.runs[-1].qualitative_samples(count)

    def files_table(self) -> pd.DataFrame:
        frames = [run.files_table().assign(epoch=run.snapshot["epoch"]) for run in self.runs]
        return pd.concat(frames)

    def run_all(self) -> list[dict]:
        from .runner import _display

        for step in (self.environment, self.data_summary, self.checkpoint_summary, self.infer, self.evaluate):
            _display(step())
        self.save()
        _display(self.paper_comparison())
        self.plots()
        return [run.result for run in self.runs]


def prepare_sweep(params, snapshots: list[Path]):
    """A `Sweep` over `snapshots`: the first is prepared (and loaded strictly) like a single run, the others
    share its data checks and are loaded when their turn comes."""
    from .runner import ConfigError, prepare

    if not snapshots:
        raise ConfigError(f"CHECKPOINT {params.checkpoint} names no checkpoint file (no match for the pattern, or an "
                          "empty folder)")
    first = prepare(dataclasses.replace(params, checkpoint=str(snapshots[0])))
    base_dir = first.output_dir
    runs = []
    for path in snapshots:
        run = first if path == snapshots[0] else dataclasses.replace(
            first, params=dataclasses.replace(params, checkpoint=str(path)), checkpoint_path=path,
            checkpoint_source=str(path), model=None, checkpoint_info={}, notes=list(first.notes), files={},
            inference=None, result=None, per_sample=None)
        run.output_dir = base_dir / "snapshots" / _stem(path)
        run.snapshot = {"run": f"{first.model_id}: {params.checkpoint}", "epoch": _epoch_from_name(path),
                        "file": str(path), "pattern": str(params.checkpoint)}
        if run.model is not None:  # the first snapshot, loaded by prepare
            run.note_stored_epoch()
        runs.append(run)
    print(f"sweep: {len(runs)} snapshots of {first.model_id} -> {base_dir / 'snapshots'}")
    return Sweep(runs=runs, pattern=str(params.checkpoint), output_dir=base_dir)
