"""Training checkpoints as safetensors (no pickle): model, optimiser, scheduler and RNG state."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .._safetensors import read_safetensors

__all__ = ["save_checkpoint", "load_checkpoint"]

FORMAT = "pnp-stable-checkpoint/1"


def _split_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, model, optimizer, scheduler, rng_state: torch.Tensor, step: int, config: dict) -> Path:
    """Write everything needed to resume at ``step`` exactly; atomic (temporary file, then rename)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _split_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    tensors["rng.sampler"] = rng_state
    metadata = {
        "format": FORMAT,
        "step": str(step),
        "config": json.dumps(config, sort_keys=True),
        "optimizer": json.dumps(optim_meta),
        "scheduler": json.dumps(scheduler.state_dict()),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and decoded metadata of a checkpoint; ``ValueError`` if it is missing or corrupt."""
    metadata, tensors = read_safetensors(path, "training checkpoint", FORMAT)
    meta = {
        "step": int(metadata["step"]),
        "config": json.loads(metadata["config"]),
        "optimizer": json.loads(metadata["optimizer"]),
        "scheduler": json.loads(metadata["scheduler"]),
    }
    meta["optimizer_state"] = _join_optimizer(tensors, meta["optimizer"])
    return tensors, meta


def model_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
