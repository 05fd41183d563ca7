"""Stage the benchmark outputs as a Kaggle dataset folder and upload it with the `kaggle` CLI.

    python -m helpers publish [--results DIR] [--runs DIR] [--stage DIR] [--owner OWNER] [--slug SLUG]
                              [--title T] [--license CC-BY-SA-4.0] [--create | --version] [--message MSG]
                              [--max-file-mb 50] [--dry-run]

What is staged: result.json, predictions.npz, per-model CSV and the report plots, executed notebooks (image
outputs removed, since a cell may show Human3.6M frames), and the consolidated report. Human3.6M images are
never staged: any other image, unknown file type, or file over the size cap is skipped and listed.
The metadata starts from `kaggle_datasets/results/dataset-metadata.template.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_json
from .environment import RUNS_SUBDIR
from .consolidate import FILE_NAMES as REPORT_FILE_NAMES
from .consolidate import SNAPSHOT_FILE_NAMES
from .report import MODEL_PLOT_FILE_NAMES, markers
from .results import RESULT_FILE

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_TEMPLATE = REPO_ROOT / "kaggle_datasets" / "results" / "dataset-metadata.template.json"
METADATA_FILE = "dataset-metadata.json"
MANIFEST_FILE = "publish_manifest.json"  # also marks a stage folder: only such a folder is ever replaced
TEMPLATE_OWNER = "YOUR_KAGGLE_USERNAME"  # the owner written in the templates
DEFAULT_MAX_FILE_MB = 50.0

# Accepted by `kaggle datasets create` (Kaggle API docs, datasets_metadata.md).
KAGGLE_LICENSES = frozenset({
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0", "DbCL-1.0",
    "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0", "CC-BY-3.0-IGO",
    "US-Government-Works", "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0", "CDLA-Sharing-1.0", "CC-BY-ND-4.0",
    "CC-BY-NC-ND-4.0", "ODC-BY-1.0", "LGPL-3.0", "AGPL-3.0", "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0",
    "GPL-3.0",
})
_OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")

DATA_SUFFIXES = frozenset({".json", ".npz", ".csv", ".md", ".txt", ".yaml", ".yml", ".tex", ".bib"})  # .tex/.bib: tables
NOTEBOOK_SUFFIX = ".ipynb"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# Plots this project writes that hold numbers only; any other image may show Human3.6M frames.
REPORT_PLOT_NAMES = frozenset(MODEL_PLOT_FILE_NAMES) | frozenset(
    name for name in (*REPORT_FILE_NAMES.values(), *SNAPSHOT_FILE_NAMES.values()) if name.endswith(".png"))


class PublishError(ValueError):
    """The dataset cannot be staged or published as asked; the message says what to change."""


@dataclass
class Staged:
    stage_dir: Path
    metadata: dict
    included: list[str] = field(default_factory=list)  # paths relative to the stage folder
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source path, reason)
    stripped_images: int = 0  # image outputs removed from executed notebooks


# ------------------------------------------------------------------------------------------------- metadata
def validate_metadata(meta: dict) -> None:
    """Raise PublishError listing every way `meta` would be rejected by `kaggle datasets create`."""
    problems = []
    if not isinstance(meta, dict):
        raise PublishError("dataset metadata must be a JSON object")
    title = meta.get("title")
    if not isinstance(title, str) or not 6 <= len(title) <= 50:
        problems.append(f"title must be a string of 6 to 50 characters (got {title!r})")
    dataset_id = meta.get("id")
    if not isinstance(dataset_id, str) or dataset_id.count("/") != 1:
        problems.append(f"id must be 'owner/slug' (got {dataset_id!r})")
    else:
        owner, slug = dataset_id.split("/")
        if owner == TEMPLATE_OWNER or not _OWNER_RE.match(owner):
            problems.append(f"id owner {owner!r} is not a Kaggle user name: pass --owner, set KAGGLE_USERNAME, "
                            "or put your kaggle.json in ~/.kaggle/")
        if not 6 <= len(slug) <= 50 or not _SLUG_RE.match(slug):
            problems.append(f"id slug {slug!r} must be 6 to 50 characters of lowercase letters, digits and "
                            "hyphens, starting and ending with a letter or digit")
    licenses = meta.get("licenses")
    if not isinstance(licenses, list) or len(licenses) != 1:
        count = len(licenses) if isinstance(licenses, list) else "no"
        problems.append(f"licenses must hold exactly one entry like [{{\"name\": \"CC-BY-SA-4.0\"}}] (got {count})")
    else:
        name = licenses[0].get("name") if isinstance(licenses[0], dict) else None
        if name not in KAGGLE_LICENSES:
            problems.append(f"license name {name!r} is not one Kaggle accepts: {', '.join(sorted(KAGGLE_LICENSES))}")
    subtitle = meta.get("subtitle")
    if subtitle is not None and (not isinstance(subtitle, str) or not 20 <= len(subtitle) <= 80):
        problems.append(f"subtitle, when given, must be 20 to 80 characters (got {len(str(subtitle))})")
    if problems:
        raise PublishError("dataset-metadata.json is not valid:\n  " + "\n  ".join(problems))


def _kaggle_secret(name: str) -> str | None:
    """A Kaggle Secret attached to this notebook (Add-ons > Secrets), when running on Kaggle."""
    try:
        from kaggle_secrets import UserSecretsClient
    except ImportError:
        return None
    try:
        return UserSecretsClient().get_secret(name) or None
    except Exception:  # the client raises its own types when the secret is not attached
        return None


def _kaggle_json_paths() -> list[Path]:
    paths = []
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        paths.append(Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json")
    paths += [Path.home() / ".kaggle" / "kaggle.json", Path.home() / ".config" / "kaggle" / "kaggle.json"]
    return paths


def resolve_owner(owner: str | None = None) -> str | None:
    """--owner, else KAGGLE_USERNAME, else the user name in kaggle.json, else the Kaggle Secret KAGGLE_USERNAME."""
    if owner:
        return owner
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    for path in _kaggle_json_paths():
        if path.is_file():
            try:
                username = json.loads(path.read_text(encoding="utf-8")).get("username")
            except (OSError, ValueError, AttributeError):
                continue
            if username:
                return username
    return _kaggle_secret("KAGGLE_USERNAME")


def build_metadata(owner: str | None, slug: str | None = None, title: str | None = None,
                   license_name: str | None = None, warnings: tuple[str, ...] = (),
                   template: Path = RESULTS_TEMPLATE) -> dict:
    """The results template with owner, slug, title and license filled in; validated. `warnings` (report.markers
    of the results: random demo weights, generated data) head the description."""
    try:
        meta = json.loads(Path(template).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PublishError(f"cannot read the metadata template {template}: {exc}") from exc
    template_owner, template_slug = meta["id"].split("/")
    meta["id"] = f"{owner or template_owner}/{slug or template_slug}"
    if title:
        meta["title"] = title
    if license_name:
        meta["licenses"] = [{"name": license_name}]
    if warnings:
        meta["description"] = (f"**WARNING: some results in this dataset carry {'; '.join(warnings)} "
                               "(see REPORT.md).**\n\n" + meta.get("description", ""))
    validate_metadata(meta)
    return meta


# -------------------------------------------------------------------------------------------------- staging
def _classify(path: Path, max_bytes: int) -> str | None:
    """None when `path` may be published, else the reason it is skipped."""
    if path.is_symlink():
        return "symbolic link (only real result files are published)"
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES and path.name not in REPORT_PLOT_NAMES:
        return "image that is not a report plot (Human3.6M frames are never published)"
    if suffix not in DATA_SUFFIXES | {NOTEBOOK_SUFFIX} and suffix not in IMAGE_SUFFIXES:
        return f"file type {suffix or '(none)'} is not a result file"
    size = path.stat().st_size
    if size > max_bytes:
        return f"{size / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB cap"
    return None


def _strip_notebook_images(path: Path) -> tuple[str, int]:
    """The notebook's JSON with every image output replaced by a short note; and how many were removed."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    removed = 0
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data")
            if not isinstance(data, dict):
                continue
            images = [k for k in data if k.startswith("image/")]
            for key in images:
                del data[key]
                removed += 1
            if images and "text/plain" not in data:
                data["text/plain"] = ["[image output removed before publishing: it may show Human3.6M frames]"]
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", removed


def _walk(root: Path):
    for path in sorted(root.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # temporary files of atomic writes, checkpoints of editors
        yield path


def _warnings_of(paths) -> tuple[str, ...]:
    """The markers (random demo weights, generated data) of the results in `paths`."""
    results = []
    for path in paths:
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # an unreadable result is staged as it is; the consolidated report lists it as a problem
        if isinstance(result, dict):
            results.append(result)
    return tuple(markers(*results))


def _prepare_stage_dir(stage_dir: Path) -> None:
    if stage_dir.exists() and any(stage_dir.iterdir()) and not (stage_dir / MANIFEST_FILE).is_file():
        raise PublishError(f"stage folder {stage_dir} is not empty and was not made by helpers.publish; "
                           "choose an empty or new folder with --stage")


def stage(results_dir, stage_dir, runs_dir=None, *, owner=None, slug=None, title=None, license_name=None,
          max_file_mb: float = DEFAULT_MAX_FILE_MB) -> Staged:
    """Copy what may be published into a fresh `stage_dir` and write a validated dataset-metadata.json.

    The folder is built beside `stage_dir` and renamed into place at the end, so a failure leaves the old one.
    """
    results_dir = Path(results_dir).resolve()
    stage_dir = Path(stage_dir).resolve()
    runs_dir = Path(runs_dir).resolve() if runs_dir is not None else results_dir / RUNS_SUBDIR
    if not results_dir.is_dir():
        raise PublishError(f"results folder {results_dir} does not exist; run the notebooks or helpers.batch first")
    if results_dir == stage_dir or stage_dir in results_dir.parents or results_dir in stage_dir.parents:
        raise PublishError(f"the stage folder {stage_dir} and the results folder {results_dir} must not contain "
                           "each other (a consolidation would read the staged copies); choose another --stage")
    _prepare_stage_dir(stage_dir)
    results = [p for p in _walk(results_dir) if p.name == RESULT_FILE]
    if not results:
        raise PublishError(f"no result.json under {results_dir}: nothing to publish")
    metadata = build_metadata(resolve_owner(owner), slug, title, license_name,
                              warnings=_warnings_of(results))

    max_bytes = int(max_file_mb * 2**20)
    sources: list[tuple[Path, Path]] = [(p, Path("results") / p.relative_to(results_dir))
                                        for p in _walk(results_dir)]
    if runs_dir.is_dir() and runs_dir != results_dir and results_dir not in runs_dir.parents:
        sources += [(p, Path(RUNS_SUBDIR) / p.relative_to(runs_dir)) for p in _walk(runs_dir)]
    staged = Staged(stage_dir=stage_dir, metadata=metadata)
    stage_dir.parent.mkdir(parents=True, exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=f".{stage_dir.name}.", dir=stage_dir.parent))
    try:
        for source, relative in sources:
            reason = _classify(source, max_bytes)
            if reason is not None:
                staged.skipped.append((str(source), reason))
                continue
            target = build_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.suffix.lower() == NOTEBOOK_SUFFIX:
                try:
                    text, removed = _strip_notebook_images(source)
                except (OSError, ValueError) as exc:
                    staged.skipped.append((str(source), f"unreadable notebook: {exc}"))
                    continue
                target.write_text(text, encoding="utf-8")
                staged.stripped_images += removed
            else:
                shutil.copy2(source, target)
            staged.included.append(relative.as_posix())
        write_json(build_dir / METADATA_FILE, metadata)
        write_json(build_dir / MANIFEST_FILE, {
            "included": staged.included,
            "skipped": [{"path": p, "reason": r} for p, r in staged.skipped],
            "notebook_image_outputs_removed": staged.stripped_images,
        })
        if stage_dir.exists():
            shutil.rmtree(stage_dir)
        os.replace(build_dir, stage_dir)
    finally:
        if build_dir.exists():
            shutil.rmtree(build_dir)
    return staged


# -------------------------------------------------------------------------------------------------- upload
def kaggle_command(stage_dir, mode: str = "create", message: str | None = None) -> list[str]:
    """The upload command. `--dir-mode zip` keeps sub-folders (without it the CLI silently skips them)."""
    if mode == "create":
        return ["kaggle", "datasets", "create", "-p", str(stage_dir), "--dir-mode", "zip"]
    if mode == "version":
        if not message:
            raise PublishError("a new dataset version needs a message: pass --message")
        return ["kaggle", "datasets", "version", "-p", str(stage_dir), "-m", message, "--dir-mode", "zip"]
    raise PublishError(f"mode must be 'create' or 'version', not {mode!r}")


def _credential_env() -> dict | None:
    """Environment for the kaggle CLI when credentials exist: env vars, a kaggle.json, or Kaggle Secrets."""
    env = dict(os.environ)
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return env
    if any(p.is_file() for p in _kaggle_json_paths()):
        return env
    username, key = _kaggle_secret("KAGGLE_USERNAME"), _kaggle_secret("KAGGLE_KEY")
    if username and key:
        env.update(KAGGLE_USERNAME=username, KAGGLE_KEY=key)
        return env
    return None


def main(argv: list[str] | None = None) -> int:
    from .environment import default_cache_dir, default_output_dir

    parser = argparse.ArgumentParser(prog="python -m helpers publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=None, help="results folder (default: the output folder)")
    parser.add_argument("--runs", type=Path, default=None, help="executed notebooks (default: RESULTS/runs)")
    parser.add_argument("--stage", type=Path, default=None,
                        help="dataset folder to build (default: kaggle_dataset in the cache folder, outside RESULTS "
                             "so that a later consolidation does not read the copies)")
    parser.add_argument("--owner", help="Kaggle user name (default: KAGGLE_USERNAME, kaggle.json, Kaggle Secrets)")
    parser.add_argument("--slug", help="dataset slug (default: from the template)")
    parser.add_argument("--title", help="dataset title, 6 to 50 characters (default: from the template)")
    parser.add_argument("--license", dest="license_name", help="one Kaggle license name, e.g. CC-BY-SA-4.0")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--create", dest="mode", action="store_const", const="create",
                      help="create a new dataset (default)")
    mode.add_argument("--version", dest="mode", action="store_const", const="version",
                      help="upload a new version of an existing dataset")
    parser.add_argument("--message", "-m", help="version notes (required with --version)")
    parser.add_argument("--max-file-mb", type=float, default=DEFAULT_MAX_FILE_MB, help="skip larger files")
    parser.add_argument("--dry-run", action="store_true", help="stage and print the command; upload nothing")
    args = parser.parse_args(argv)

    results_dir = args.results if args.results is not None else default_output_dir()
    stage_dir = args.stage if args.stage is not None else default_cache_dir() / "kaggle_dataset"
    try:
        command = kaggle_command(stage_dir.resolve(), args.mode or "create", args.message)
        staged = stage(results_dir, stage_dir, args.runs, owner=args.owner, slug=args.slug, title=args.title,
                       license_name=args.license_name, max_file_mb=args.max_file_mb)
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"staged {len(staged.included)} file(s) for {staged.metadata['id']} in {staged.stage_dir}")
    if staged.stripped_images:
        print(f"removed {staged.stripped_images} image output(s) from executed notebooks")
    for path, reason in staged.skipped:
        print(f"skipped {path}: {reason}")
    printable = shlex.join(command)
    if args.dry_run:
        print(f"dry run, nothing uploaded. To upload: {printable}")
        return 0
    env = _credential_env()
    if shutil.which("kaggle") is None or env is None:
        missing = "the kaggle CLI (pip install kaggle)" if shutil.which("kaggle") is None else \
            "Kaggle credentials (KAGGLE_USERNAME/KAGGLE_KEY, ~/.kaggle/kaggle.json, or Kaggle Secrets)"
        print(f"not uploaded: {missing} is not available. Run this once it is:\n  {printable}")
        return 0
    print(f"running: {printable}")
    return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
