"""Golden model fixtures: fill rule v1 and fixture input (see tests/data/golden/README.md).

Test-only code: it builds the exact state dicts the official implementations were run with.
"""
from __future__ import annotations

import json
import math
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

GOLDEN_MODELS = Path(__file__).resolve().parent / "data" / "golden" / "models"


def fixture_paths(include_legacy: bool = True) -> list[Path]:
    paths = sorted(GOLDEN_MODELS.glob("*.json"))
    return [p for p in paths if include_legacy or "_legacy_keys" not in p.name]


def load_fixture(name_or_path) -> dict:
    p = Path(name_or_path)
    if not p.suffix:
        p = GOLDEN_MODELS / f"{name_or_path}.json"
    return json.loads(p.read_text())


def _strip(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def fill_value(key: str, shape, seed: int) -> np.ndarray:
    """Rule v1 for one tensor; `key` is the canonical key (the `module.` prefix is ignored)."""
    k = _strip(key)
    rng = np.random.default_rng([seed, zlib.crc32(k.encode("utf-8"))])
    s = tuple(shape)
    if k.endswith("num_batches_tracked"):
        return np.zeros(s, np.int64)
    if k.endswith("running_var"):
        v = 0.5 + rng.random(s)
    elif k.endswith("running_mean"):
        v = 0.1 * rng.standard_normal(s)
    elif len(s) == 1 and k.endswith("weight"):
        v = 1.0 + 0.1 * rng.standard_normal(s)
    elif len(s) == 1:
        v = 0.1 * rng.standard_normal(s)
    else:
        v = rng.standard_normal(s) / math.sqrt(np.prod(s[1:]))
    return v.astype(np.float32)


def fill_state_dict(fixture: dict) -> "OrderedDict[str, torch.Tensor]":
    """The fixture's state dict, keys exactly as listed (with `module.`), filled by rule v1."""
    fill = fixture["fill"]
    seed = fill["seed"]
    mult_keys = set(fill["final_layer_multiplier"]["keys"])
    mult = np.float32(fill["final_layer_multiplier"]["multiplier"])
    canonical = fixture.get("canonical_keys", {})
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape, _dtype in fixture["state_dict"]:
        rng_key = canonical.get(key, key)
        value = fill_value(rng_key, shape, seed)
        if key in mult_keys or rng_key in mult_keys:
            value = value * mult
        out[key] = torch.from_numpy(np.array(value))  # np.array keeps 0-d shapes (num_batches_tracked)
    return out


def fixture_input(fixture: dict) -> torch.Tensor:
    inp = fixture["input"]
    x = np.random.default_rng([inp["seed"]]).standard_normal(tuple(inp["shape"])).astype(np.float32)
    return torch.from_numpy(x)


def fixture_extra_inputs(fixture: dict) -> dict:
    extra = fixture.get("extra_inputs") or {}
    if "k_value" in extra:
        return {"k": torch.tensor(extra["k_value"]["value"], dtype=torch.float32)}
    return {}


def expected_coords(fixture: dict) -> np.ndarray:
    return np.asarray(fixture["expected"]["coords"], dtype=np.float64)


def atol(fixture: dict) -> np.ndarray | float:
    tol = fixture["tolerance"]
    if "atol_per_component" in tol:
        return np.asarray(tol["atol_per_component"], dtype=np.float64)
    return float(tol["atol"])
