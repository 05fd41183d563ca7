"""Headless batch runs: execute the model notebooks with papermill, then consolidate the results.

    python -m helpers batch [--plan plan.yaml] [--out DIR] [--image-limit N] [--only MODEL_IDS]

Each run of the plan executes one notebook in its own kernel (papermill, kernel "python3") and saves
the executed notebook under `<out>/runs/<run id>.ipynb`; the model outputs go to `<out>/<model id>/`.
A run that fails is recorded (model, error, notebook path: papermill keeps the notebook up to the
failing cell) and the batch goes on. Then `consolidate.ipynb` merges every `result.json` under `<out>`
into `<out>/report/` and the batch prints where REPORT.md is.

With no arguments and no real data under the input roots, every notebook runs on the generated demo
set with random-initialised checkpoints (DEMO "auto"), so the command works anywhere; the plan's
`demo_defaults` (default plan: 32 images per model, batch size 8) keep that demo quick on a CPU.

Exit status: 0 when at least one model run succeeded and the report was written, even if other runs
failed (each failure is listed and kept in `<out>/batch_summary.json`); 1 when every model run failed
(there is nothing to report); 2 when the plan or the arguments are invalid, or the consolidation
itself failed (the report is missing).
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import pandas as pd

from .atomic import write_json
from .environment import BATCH_ENV_VAR  # tells the kernels that nobody can answer widgets
from .environment import OWN_NOTEBOOKS_SUBDIR, REPORT_SUBDIR, RUNS_SUBDIR
from .results import RESULT_FILE

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
DEFAULT_NOTEBOOK_DIR = REPO_ROOT / "notebooks"
CONSOLIDATE_NOTEBOOK = "consolidate.ipynb"
KERNEL_NAME = "python3"


class PlanError(ValueError):
    """The batch plan is malformed; the message says which entry and what to change."""


@dataclass
class PlannedRun:
    run_id: str
    notebook: str
    parameters: dict  # the plan's defaults updated with the run's own parameters
    own_parameters: dict = field(default_factory=dict)  # the run's own parameters only


@dataclass
class Plan:
    runs: list[PlannedRun]
    source: str
    defaults: dict = field(default_factory=dict)
    demo_defaults: dict = field(default_factory=dict)  # parameters added when the batch runs on the demo


@dataclass
class RunRecord:
    run_id: str
    notebook: str
    output_notebook: str
    status: str  # "ok" | "failed"
    seconds: float
    model_id: str | None = None
    result_json: str | None = None
    error: str | None = None
    failed_cell: int | None = None  # index in the executed notebook (papermill adds one parameters cell)
    parameters: dict = field(default_factory=dict)


def default_plan_text() -> str:
    return resources.files("helpers").joinpath("plans", "default.yaml").read_text(encoding="utf-8")


def parse_plan(text: str, source: str = "<plan>") -> Plan:
    """Read a plan: `defaults` (papermill parameters for every run), `demo_defaults` (added when no real
    data is found, so the demo stays quick on a CPU) and `runs` (id, notebook, parameters)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlanError(f"plan {source} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list) or not data["runs"]:
        raise PlanError(f"plan {source} needs a non-empty 'runs' list of {{id, notebook, parameters}} entries")
    defaults = data.get("defaults") or {}
    demo_defaults = data.get("demo_defaults") or {}
    for key, value in (("defaults", defaults), ("demo_defaults", demo_defaults)):
        if not isinstance(value, dict):
            raise PlanError(f"plan {source}: '{key}' must be a mapping of notebook parameters")
    unknown_top = set(data) - {"defaults", "demo_defaults", "runs"}
    if unknown_top:
        raise PlanError(f"plan {source}: unknown top-level key(s) {sorted(unknown_top)}; "
                        "use 'defaults', 'demo_defaults' and 'runs'")
    runs, seen = [], set()
    for i, entry in enumerate(data["runs"]):
        where = f"plan {source}, run #{i + 1}"
        if not isinstance(entry, dict) or not entry.get("notebook"):
            raise PlanError(f"{where}: each run needs at least a 'notebook' (e.g. convnextpose.ipynb)")
        unknown = set(entry) - {"id", "notebook", "parameters"}
        if unknown:
            raise PlanError(f"{where}: unknown key(s) {sorted(unknown)}; use id, notebook, parameters")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise PlanError(f"{where}: 'parameters' must be a mapping such as {{MODEL: convnextpose, VARIANT: XS}}")
        run_id = str(entry.get("id") or Path(entry["notebook"]).stem)
        if run_id in seen:
            raise PlanError(f"{where}: run id {run_id!r} is used twice; give each run a distinct 'id'")
        seen.add(run_id)
        runs.append(PlannedRun(run_id, str(entry["notebook"]), {**defaults, **params}, dict(params)))
    return Plan(runs, source, defaults, demo_defaults)


def load_plan(path: str | os.PathLike | None = None) -> Plan:
    if path is None:
        return parse_plan(default_plan_text(), "helpers/plans/default.yaml")
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan file {path} does not exist; pass a YAML plan (see helpers/plans/default.yaml)")
    return parse_plan(path.read_text(encoding="utf-8"), str(path))


def select_runs(plan: Plan, only: list[str] | None) -> list[PlannedRun]:
    """Runs whose id (e.g. convnextpose_XS, rootnet) is in `only`; all when `only` is empty."""
    if not only:
        return list(plan.runs)
    known = [r.run_id for r in plan.runs]
    unknown = [o for o in only if o not in known]
    if unknown:
        raise PlanError(f"--only names run(s) {unknown} that are not in plan {plan.source}; known: {', '.join(known)}")
    return [r for r in plan.runs if r.run_id in only]


def notebook_path(run: PlannedRun, notebook_dir: Path) -> Path:
    """The notebook file a run executes: its `notebook` relative to the notebook folder (or absolute)."""
    return Path(notebook_dir) / run.notebook


def _closest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def validate_runs(runs: list[PlannedRun], notebook_dir: Path, added: tuple[str, ...] = ()) -> None:
    """Before anything runs: every notebook exists, and every parameter a run passes is one of its notebook's
    parameters (papermill would only warn "Passed unknown parameter" and run on with the default). `added` are the
    parameters the batch itself may pass (OUTPUT_DIR, IMAGE_LIMIT/CHECKPOINT from the flags, the plan's
    demo_defaults). Raises PlanError naming the run, the bad name and the closest valid one."""
    import papermill

    known: dict[Path, tuple[str, ...]] = {}
    for run in runs:
        notebook = notebook_path(run, notebook_dir)
        if not notebook.is_file():
            available = sorted(p.name for p in Path(notebook_dir).glob("*.ipynb"))
            raise PlanError(f"run {run.run_id!r}: notebook {notebook} does not exist{_closest(run.notebook, available)} "
                            f"(notebooks in {notebook_dir}: {', '.join(available) or 'none'})")
        if notebook not in known:  # the names of its `parameters` cell, as papermill reads them
            known[notebook] = tuple(papermill.inspect_notebook(str(notebook)))
        parameters = known[notebook]
        for name in [*run.parameters, *added]:
            if name not in parameters:
                raise PlanError(f"run {run.run_id!r}: {name!r} is not a parameter of {notebook.name}"
                                f"{_closest(name, parameters)} (its parameters: {', '.join(parameters)})")


def _failure_text(exc: BaseException) -> tuple[str, int | None]:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return f"{exc.ename}: {exc.evalue}", exc.cell_index
    return f"{type(exc).__name__}: {exc}", None


@contextlib.contextmanager
def _stderr_to(log_path: Path):
    """Send this process's standard error, and so the kernel's (it inherits it), to `log_path` meanwhile.

    A kernel logs routine start-up and shut-down messages there ("running over TCP without encryption",
    "KeyboardInterrupt caught in kernel") that look like failures; a real failure is reported from the notebook
    itself, and the log is kept beside the executed notebook."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log_path, "ab") as log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def execute(notebook: Path, output: Path, parameters: dict, cwd: Path) -> tuple[str | None, int | None]:
    """Run one notebook headless; return (error text, failing cell index) or (None, None) on success. The kernel's
    own log goes to `<output>.log` (shown in the error text when the run fails without a cell error)."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    log_path = output.with_suffix(".log")
    log_path.unlink(missing_ok=True)
    try:
        with _stderr_to(log_path):
            papermill.execute_notebook(str(notebook), str(output), parameters=parameters, cwd=str(cwd),
                                       kernel_name=KERNEL_NAME, progress_bar=False)
    except Exception as exc:  # noqa: BLE001 - any failure of one run is recorded and the batch goes on
        error, cell = _failure_text(exc)
        if cell is None:  # not an error in a cell (a dead kernel, a timeout): the kernel's log says more
            error += f" (kernel log: {log_path})"
        return error, cell
    return None, None


def _kernel_environment() -> None:
    """Make the kernels import this copy of helpers and know they run headless (they inherit os.environ)."""
    os.environ[BATCH_ENV_VAR] = "1"
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *parts])
    os.environ.setdefault("MPLBACKEND", "Agg")


def _expected_model_id(parameters: dict) -> str | None:
    """The model id a run's MODEL/VARIANT (and MODEL_FILE) parameters name; None when they name none (the run
    will say why)."""
    from .models.registry import UnknownModelError, load_family_file, resolve_model_id

    if "MODEL" not in parameters:
        return None
    try:
        if parameters.get("MODEL_FILE"):
            load_family_file(parameters["MODEL_FILE"])
        return resolve_model_id(parameters["MODEL"], parameters.get("VARIANT"))
    except (UnknownModelError, ValueError):
        return None


def _fresh_result(out_dir: Path, model_id: str | None, since: float) -> Path | None:
    """`<out>/<model_id>/result.json` when this run wrote it (modified after `since`); for a snapshot sweep, the
    sweep's table `<out>/<model_id>/snapshots.csv` (each epoch's result.json is under `snapshots/`)."""
    from .sweep import SWEEP_CSV

    if model_id is None:
        return None
    for path in (out_dir / model_id / RESULT_FILE, out_dir / model_id / SWEEP_CSV):
        if path.is_file() and path.stat().st_mtime >= since:
            return path
    return None


def run_plan(runs: list[PlannedRun], out_dir: Path, notebook_dir: Path = DEFAULT_NOTEBOOK_DIR,
             image_limit: int | None = None, checkpoint: str | None = None) -> list[RunRecord]:
    """Execute `runs` one after another; a failing run is recorded and the next one starts."""
    _kernel_environment()
    out_dir = Path(out_dir).resolve()
    records = []
    for i, run in enumerate(runs, 1):
        notebook = notebook_path(run, notebook_dir)
        output = out_dir / RUNS_SUBDIR / f"{run.run_id}.ipynb"
        params = {**run.parameters, "OUTPUT_DIR": str(out_dir)}
        if image_limit is not None:
            params["IMAGE_LIMIT"] = int(image_limit)
        if checkpoint is not None:
            params["CHECKPOINT"] = str(checkpoint)
        print(f"[{i}/{len(runs)}] {run.run_id}: {run.notebook} {params}", flush=True)
        model_id = _expected_model_id(params)
        since = time.time() - 1.0  # file-system timestamps may be coarser than the clock
        start = time.perf_counter()
        error, cell = execute(notebook, output, params, notebook_dir)
        seconds = round(time.perf_counter() - start, 2)
        result_json = _fresh_result(out_dir, model_id, since) if error is None else None
        if error is None and result_json is None:
            error = (f"the notebook finished but wrote no {out_dir / str(model_id) / RESULT_FILE}; "
                     "its MODEL/VARIANT parameters must name the model it runs")
        record = RunRecord(run.run_id, run.notebook, str(output), "failed" if error else "ok", seconds,
                           model_id=model_id, result_json=str(result_json) if result_json else None,
                           error=error, failed_cell=cell, parameters=params)
        records.append(record)
        print(f"    {record.status} in {seconds:.1f} s" + (f": {error}" if error else f" -> {result_json}"),
              flush=True)
    return records


def records_frame(records: list[RunRecord]) -> pd.DataFrame:
    rows = [{"run": r.run_id, "status": r.status, "model_id": r.model_id, "seconds": r.seconds,
             "error": r.error or "", "notebook": r.output_notebook} for r in records]
    return pd.DataFrame(rows).set_index("run")


def real_data_found() -> tuple[bool, str]:
    """Whether the input roots hold real Human3.6M annotations (the runner's DEMO "auto" test), and a line saying
    so."""
    from . import environment, h36m

    roots = environment.default_input_roots()
    found = h36m.find_real_annotations(roots)
    if found is not None:
        return True, f"real annotations found under {found[1]}"
    searched = ", ".join(str(r) for r in roots) or "no input root exists"
    return False, f"no real Human3.6M annotations under the input roots ({searched})"


def uses_demo_data(parameters: dict) -> bool:
    """Whether a run with these parameters runs on the generated demo data when no real data is found: it names no
    DATA_ROOT and does not turn DEMO off."""
    return not parameters.get("DATA_ROOT") and str(parameters.get("DEMO", "auto")).lower() != "false"


def family_runs(model_file: str | os.PathLike, notebook_dir: Path, defaults: dict | None = None) -> list[PlannedRun]:
    """One run per model of the family in `model_file`, on that family's notebook, written into `notebook_dir`
    from the template (helpers.notebook_template)."""
    from .atomic import write_text
    from .models.registry import load_family_file
    from .notebook_template import model_notebook, notebook_text

    model_file = str(Path(model_file).expanduser().resolve())
    family = load_family_file(model_file)
    notebook = write_text(Path(notebook_dir) / family.notebook.file, notebook_text(model_notebook(family)))
    runs = []
    for spec in family.models:
        own = {"MODEL": family.name, "VARIANT": spec.variant, "MODEL_FILE": model_file}
        runs.append(PlannedRun(spec.model_id, str(notebook), {**(defaults or {}), **own}, own))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers batch", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--plan", help="YAML plan (default: helpers/plans/default.yaml)")
    parser.add_argument("--out", help="output folder (default: environment.default_output_dir())")
    parser.add_argument("--image-limit", type=int,
                        help="IMAGE_LIMIT of every run: N test images spread evenly over its test set "
                             "(partial results)")
    parser.add_argument("--model-file", action="append", default=[], metavar="FILE",
                        help="a family file of your own (README: \"Benchmark your own model\"): adds one run per model "
                             "of that family; without --plan only those runs (repeatable)")
    parser.add_argument("--checkpoint", metavar="PATH|GLOB",
                        help="CHECKPOINT of every run: a file, URL or Drive id, or a folder or glob of snapshots "
                             "(one result per epoch); use with --only or --model-file")
    parser.add_argument("--only", help="comma-separated run ids of the plan, e.g. convnextpose_XS,rootnet")
    parser.add_argument("--notebooks", help=f"folder holding the notebooks (default: {DEFAULT_NOTEBOOK_DIR})")
    args = parser.parse_args(argv)

    from . import environment

    if args.image_limit is not None and args.image_limit < 1:
        print("error: --image-limit must be a positive number of images", file=sys.stderr)
        return 2
    notebook_dir = Path(args.notebooks) if args.notebooks else DEFAULT_NOTEBOOK_DIR
    if not (notebook_dir / CONSOLIDATE_NOTEBOOK).is_file():
        print(f"error: {notebook_dir} does not hold the notebooks ({CONSOLIDATE_NOTEBOOK} is missing); "
              "pass --notebooks DIR", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else environment.default_output_dir()
    out_dir = out_dir.resolve()
    try:
        plan = load_plan(args.plan)
        if args.model_file:
            own = [run for f in args.model_file
                   for run in family_runs(f, out_dir / OWN_NOTEBOOKS_SUBDIR, plan.defaults)]
            files = ", ".join(args.model_file)
            source = files if args.plan is None else f"{plan.source} + {files}"
            plan = Plan(([] if args.plan is None else plan.runs) + own, source, plan.defaults, plan.demo_defaults)
        only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
        runs = select_runs(plan, only)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, SyntaxError, ImportError) as exc:  # a family file that cannot be loaded
        print(f"error: --model-file: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    added = ("OUTPUT_DIR", *plan.demo_defaults) + (("IMAGE_LIMIT",) if args.image_limit is not None else ()) + \
        (("CHECKPOINT",) if args.checkpoint is not None else ())
    try:
        validate_runs(runs, notebook_dir, added)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"batch: {len(runs)} run(s) from {plan.source} -> {out_dir}")
    found, note = real_data_found()
    print(f"batch: {note}", flush=True)
    demo_runs = [r.run_id for r in runs if uses_demo_data(r.parameters)] if not found else []
    if demo_runs:
        # The plan's demo_defaults go over its defaults, under each run's own parameters and the flags.
        runs = [PlannedRun(r.run_id, r.notebook, {**plan.defaults, **plan.demo_defaults, **r.own_parameters},
                           r.own_parameters) if r.run_id in demo_runs else r for r in runs]
        flags = {"IMAGE_LIMIT": args.image_limit} if args.image_limit is not None else {}
        weights = (f"the checkpoint {args.checkpoint}" if args.checkpoint is not None
                   else "random demo weights unless the run sets CHECKPOINT")
        print(f"batch: {len(demo_runs)} run(s) without DATA_ROOT use the generated demo data ({weights}); their "
              f"demo settings: {({**plan.demo_defaults, **flags})}", flush=True)

    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    records = run_plan(runs, out_dir, notebook_dir, image_limit=args.image_limit, checkpoint=args.checkpoint)
    succeeded = [r for r in records if r.status == "ok"]
    # consolidate reads every result.json in the folder: say which ones this batch did not write
    written = {r.result_json for r in succeeded}
    earlier = sorted(str(p) for p in out_dir.glob(f"*/{RESULT_FILE}") if str(p) not in written)
    if succeeded and earlier:
        print(f"batch: note: the report also includes {len(earlier)} result(s) from earlier runs in {out_dir}: "
              + ", ".join(Path(p).parent.name for p in earlier), flush=True)

    consolidation = None
    report_dir = out_dir / REPORT_SUBDIR
    if succeeded:
        print("consolidating ...", flush=True)
        output = out_dir / RUNS_SUBDIR / CONSOLIDATE_NOTEBOOK
        t1 = time.perf_counter()
        error, cell = execute(notebook_dir / CONSOLIDATE_NOTEBOOK, output,
                              {"RESULTS_DIR": str(out_dir), "OUT_DIR": str(report_dir)}, notebook_dir)
        if error is None and not (report_dir / "REPORT.md").is_file():
            error = f"consolidate.ipynb finished but {report_dir / 'REPORT.md'} was not written"
        consolidation = RunRecord("consolidate", CONSOLIDATE_NOTEBOOK, str(output), "failed" if error else "ok",
                                  round(time.perf_counter() - t1, 2), error=error, failed_cell=cell)

    summary = {
        "started_utc": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 2),
        "plan": plan.source,
        "out_dir": str(out_dir),
        "runs": [asdict(r) for r in records],
        "consolidation": asdict(consolidation) if consolidation else None,
        "earlier_results": earlier,
        "report": str(report_dir / "REPORT.md") if consolidation and consolidation.status == "ok" else None,
    }
    write_json(out_dir / "batch_summary.json", summary, indent=2)

    with pd.option_context("display.max_colwidth", 120, "display.width", 200):
        print(records_frame(records).to_string())
    print(f"batch: {len(succeeded)} of {len(records)} run(s) succeeded in {summary['seconds']:.0f} s; "
          f"summary: {out_dir / 'batch_summary.json'}")
    if not succeeded:
        print("batch: every run failed; nothing to consolidate (see the executed notebooks under "
              f"{out_dir / RUNS_SUBDIR})", file=sys.stderr)
        return 1
    if consolidation.status != "ok":
        print(f"batch: consolidation failed: {consolidation.error} (notebook: {consolidation.output_notebook})",
              file=sys.stderr)
        return 2
    print(f"batch: report: {report_dir / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
