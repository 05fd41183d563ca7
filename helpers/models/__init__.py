"""Model zoo: one file per model family, the registry that collects them, and safe checkpoint loading."""
from .registry import (FAMILIES, MODEL_REGISTRY, CheckpointRelease, CheckpointSource, Family, ModelSpec, NotebookText,
                       PaperResult, build_model, get_family, get_spec, list_models, load_family_file)


def load_checkpoint(path_or_state_dict, model_id=None, **kwargs):
    """Load a checkpoint strictly; see `helpers.models.checkpoint.load_checkpoint`."""
    from .checkpoint import load_checkpoint as _load

    return _load(path_or_state_dict, model_id=model_id, **kwargs)


__all__ = ["FAMILIES", "MODEL_REGISTRY", "CheckpointRelease", "CheckpointSource", "Family", "ModelSpec", "NotebookText",
           "PaperResult", "build_model", "get_family", "get_spec", "list_models", "load_checkpoint", "load_family_file"]
