"""The model registry: it collects model families, one file each (timm's pattern), and knows nothing else.

A family file (built in: `helpers/models/<family>.py`; your own: any `.py` file, see the README section
"Benchmark your own model") defines its architecture and a module-level `FAMILY = Family(...)` holding its
`ModelSpec`s as keyword configs (variants, paper numbers and their sources, downloads, normalisation), its
display name, its checkpoint key filter and that filter's inverse (for demo checkpoints), and its notebook
text. `MODEL_REGISTRY` maps every model id of every collected family to its spec; the spec alone decides
input size, normalisation, decode and flip pairs, so the inference engine never needs to know which model
it runs.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Mapping

from .spec import CheckpointRelease, CheckpointSource, Family, ModelSpec, NotebookText, PaperResult

__all__ = ["BUILTIN_FAMILY_MODULES", "FAMILIES", "MODEL_REGISTRY", "CheckpointRelease", "CheckpointSource", "Family",
           "ModelSpec", "NotebookText", "PaperResult", "UnknownModelError", "build_model", "clean_family_keys",
           "display_name", "family_files", "get_family", "get_spec", "list_models", "load_family_file",
           "load_model_files", "own_model_ids", "register_family", "resolve_model_id"]

BUILTIN_FAMILY_MODULES = ("convnextpose", "posenet", "rootnet", "mobilehumanpose", "integral")


class UnknownModelError(ValueError):
    """A model, family or variant name the registry does not know; the message lists the valid ones."""


FAMILIES: dict[str, Family] = {}
MODEL_REGISTRY: dict[str, ModelSpec] = {}
_FAMILY_FILES: dict[str, str] = {}  # resolved path -> family name, for family files outside the package


def register_family(family: Family) -> Family:
    """Add a family and its models; a name or model id that is already taken is refused."""
    if not isinstance(family, Family):
        raise TypeError(f"a family file must define FAMILY = Family(...); got {type(family).__name__}")
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered (from {FAMILIES[family.name].source})")
    if not family.models:
        raise ValueError(f"model family {family.name!r} defines no ModelSpec")
    for spec in family.models:
        if spec.family != family.name:
            raise ValueError(f"{spec.model_id}: family {spec.family!r} differs from its Family {family.name!r}")
        if spec.model_id in MODEL_REGISTRY:
            raise ValueError(f"model id {spec.model_id!r} of family {family.name!r} is already registered "
                             f"(family {MODEL_REGISTRY[spec.model_id].family!r})")
    if family.notebook.default_variant not in family.variants():
        raise ValueError(f"{family.name}: notebook default variant {family.notebook.default_variant!r} is not one "
                         f"of {family.variants()}")
    FAMILIES[family.name] = family
    MODEL_REGISTRY.update({spec.model_id: spec for spec in family.models})
    return family


def load_family_file(path) -> Family:
    """Import a family file from outside the package and register its `FAMILY` (once per file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UnknownModelError(f"MODEL_FILE {path} does not exist; give the path of a family file (.py) that "
                                "defines FAMILY = Family(...)")
    resolved = str(path.resolve())
    if resolved in _FAMILY_FILES:
        return FAMILIES[_FAMILY_FILES[resolved]]
    # Imported under its own name with its folder on sys.path, so that pickling (multi-GPU runs hand the model
    # to spawned processes, which inherit sys.path) finds the classes it defines.
    module_name = path.stem
    if not module_name.isidentifier():
        raise UnknownModelError(f"MODEL_FILE {path}: the file name must be a Python module name (letters, digits, "
                                "underscores), e.g. my_family.py")
    taken = sys.modules.get(module_name)
    if taken is not None and getattr(taken, "__file__", None) != resolved:
        raise UnknownModelError(f"MODEL_FILE {path}: a module named {module_name!r} is already imported "
                                f"({getattr(taken, '__file__', 'built in')}); rename your family file")
    module_spec = importlib.util.spec_from_file_location(module_name, resolved)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look classes up by module name
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    if str(path.resolve().parent) not in sys.path:
        sys.path.append(str(path.resolve().parent))
    family = getattr(module, "FAMILY", None)
    if family is None:
        raise UnknownModelError(f"{path} defines no FAMILY = Family(...)")
    family = register_family(_with_source(family, resolved))
    _FAMILY_FILES[resolved] = family.name
    return family


MODEL_FILE_HELP = "a family file of your own (README: \"Benchmark your own model\"), so its models are known; repeatable"


def load_model_files(argv: list[str] | None) -> list[Family]:
    """Load the `--model-file FILE` options of a command line before its parser is built (its model-id
    choices must include those families)."""
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model-file", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    return [load_family_file(path) for path in known.model_file]


def family_files() -> list[str]:
    """The family files loaded from outside the package (resolved paths), in loading order."""
    return list(_FAMILY_FILES)


def own_model_ids() -> list[str]:
    """The model ids of the families loaded from family files outside the package."""
    return [spec.model_id for name in _FAMILY_FILES.values() for spec in FAMILIES[name].models]


def _with_source(family: Family, source: str) -> Family:
    return dataclasses.replace(family, source=source)


def _collect_builtin() -> None:
    for name in BUILTIN_FAMILY_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        register_family(_with_source(module.FAMILY, f"{__package__}.{name}"))


def list_models(family: str | None = None) -> list[str]:
    return [k for k, v in MODEL_REGISTRY.items() if family is None or v.family == family]


def get_spec(model_id: str) -> ModelSpec:
    try:
        return MODEL_REGISTRY[model_id]
    except KeyError:
        raise KeyError(f"unknown model id {model_id!r}; known: {', '.join(MODEL_REGISTRY)}") from None


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def display_name(spec: ModelSpec) -> str:
    """"<family display name> <variant>", e.g. "ConvNeXtPose L"."""
    family = FAMILIES.get(spec.family)
    return f"{family.display_name if family else spec.family} {spec.variant}"


def build_model(model_id: str, **overrides):
    """Build `model_id` randomly initialised, in eval mode, on CPU."""
    return get_spec(model_id).build(**overrides)


def resolve_model_id(model: str, variant: str | None = None) -> str:
    """Registry model id for a family and variant ("convnextpose", "L" -> "convnextpose_L").

    `model` may also be a model id itself; then `variant` must be None or that model's variant.
    Families and variants match case-insensitively. Raises `UnknownModelError` naming the valid choices.
    """
    model = str(model).strip()
    variant = None if variant is None or str(variant).strip() == "" else str(variant).strip()
    if model in MODEL_REGISTRY:
        spec = MODEL_REGISTRY[model]
        if variant is not None and variant.lower() != spec.variant.lower():
            raise UnknownModelError(f"MODEL {model!r} is the model id of variant {spec.variant!r}, but VARIANT is "
                                    f"{variant!r}; set VARIANT = None or {spec.variant!r}, or MODEL = {spec.family!r}")
        return model
    family = FAMILIES.get(model.lower())
    if family is None:
        raise UnknownModelError(f"unknown MODEL {model!r}; choose a family ({', '.join(FAMILIES)}) "
                                f"or a model id ({', '.join(MODEL_REGISTRY)}); a family of your own needs MODEL_FILE")
    if variant is None:
        if len(family.models) == 1:
            return family.models[0].model_id
        raise UnknownModelError(f"MODEL {family.name!r} needs a VARIANT; valid variants: "
                                f"{', '.join(family.variants())}")
    for spec in family.models:
        if spec.variant.lower() == variant.lower():
            return spec.model_id
    raise UnknownModelError(f"unknown VARIANT {variant!r} for MODEL {family.name!r}; valid variants: "
                            f"{', '.join(family.variants())}")


def clean_family_keys(state_dict: Mapping) -> tuple[dict, list[str]]:
    """Apply every family's key filter (each acts only on its own sentinel keys); returns the notes too."""
    state_dict, notes = dict(state_dict), []
    for family in FAMILIES.values():
        if family.key_filter is not None:
            state_dict, applied = family.key_filter(state_dict)
            notes += applied
    return state_dict, notes


_collect_builtin()
