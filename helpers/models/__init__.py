"""Model zoo: architectures, registry, and safe checkpoint loading."""
from .registry import MODEL_REGISTRY, CheckpointSource, ModelSpec, PaperResult, build_model, get_spec, list_models


def load_checkpoint(path_or_state_dict, model_id=None, **kwargs):
    """Load a checkpoint strictly; see `helpers.models.checkpoint.load_checkpoint`."""
    from .checkpoint import load_checkpoint as _load

    return _load(path_or_state_dict, model_id=model_id, **kwargs)


__all__ = ["MODEL_REGISTRY", "CheckpointSource", "ModelSpec", "PaperResult", "build_model", "get_spec",
           "list_models", "load_checkpoint"]
