"""Training checkpoints as safetensors (no pickle): model, optimiser, scheduler and the patch sampler's RNG state
of every process, with a SHA-256 digest of the whole content that is checked before a run resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from .._finite import check_finite_tensors
from .._safetensors import content_digest, read_safetensors, write_safetensors

__all__ = ["save_checkpoint", "load_checkpoint", "option_change", "sampler_state"]


def option_change(key: str, there, here) -> str:
    """One option that differs between a checkpoint and a resume, for the refusal: its stored and given values (for
    a dict such as the architecture, only the entries that differ)."""
    if isinstance(there, dict) and isinstance(here, dict):
        return "; ".join(f"{key}.{name}: {there.get(name)!r} there, {here.get(name)!r} here"
                         for name in sorted(there.keys() | here.keys()) if there.get(name) != here.get(name))
    return f"{key}: {there!r} there, {here!r} here"

FORMAT = "pnp-stable-checkpoint/1"
SAMPLER_PREFIX = "rng.sampler."  # one tensor per process: rng.sampler.0, rng.sampler.1, …


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


def save_checkpoint(path: str | Path, model, optimizer, scheduler, rng_state: torch.Tensor | Sequence[torch.Tensor],
                    step: int, config: dict, history: dict | None = None) -> Path:
    """Write everything needed to resume at ``step`` exactly; atomic (temporary file, then rename).
    ``rng_state``: the patch sampler's generator state of every process, in rank order (one tensor for a
    single process). ``history``: the run's record across resumes (validation curve, training seconds), JSON.
    A SHA-256 digest of the content goes into the metadata."""
    states = [rng_state] if isinstance(rng_state, torch.Tensor) else list(rng_state)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _split_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    tensors.update({f"{SAMPLER_PREFIX}{rank}": state.detach().cpu().contiguous() for rank, state in enumerate(states)})
    metadata = {
        "format": FORMAT,
        "step": str(step),
        "config": json.dumps(config, sort_keys=True),
        "optimizer": json.dumps(optim_meta),
        "scheduler": json.dumps(scheduler.state_dict()),
        "history": json.dumps(history or {}),
    }
    return write_safetensors(path, tensors, metadata)


def _verify(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Refuse a checkpoint without a digest, one whose content does not match it, and non-finite tensors."""
    if "sha256" not in metadata:
        raise ValueError(f"{path}: this training checkpoint has no SHA-256 digest (written before checkpoints were "
                         "checksummed), so its content cannot be verified; start a new run in its place (--overwrite "
                         "instead of --resume)")
    if content_digest(tensors, metadata) != metadata["sha256"]:
        raise ValueError(f"{path}: checkpoint content does not match its recorded SHA-256 digest (file modified or "
                         "corrupt); restore an intact copy or start a new run in its place (--overwrite instead of "
                         "--resume)")
    check_finite_tensors(tensors, str(path))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and decoded metadata of a checkpoint; ``ValueError`` if it is missing, corrupt, unverifiable
    (no digest), modified since it was written (digest mismatch) or holds NaN/Inf values."""
    metadata, tensors = read_safetensors(path, "training checkpoint", FORMAT)
    _verify(path, tensors, metadata)
    try:
        meta = {
            "step": int(metadata["step"]),
            "config": json.loads(metadata["config"]),
            "optimizer": json.loads(metadata["optimizer"]),
            "scheduler": json.loads(metadata["scheduler"]),
            "history": json.loads(metadata.get("history", "{}")),  # absent from checkpoints written before it
        }
        meta["optimizer_state"] = _join_optimizer(tensors, meta["optimizer"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: invalid checkpoint metadata ({type(err).__name__}: {err})") from err
    return tensors, meta


def sampler_state(tensors: dict[str, torch.Tensor], path: str | Path, rank: int, world: int) -> torch.Tensor:
    """The patch sampler's generator state saved for process ``rank``; refused unless the checkpoint holds
    the states of exactly ``world`` processes (another process count would draw other patches: not exact)."""
    saved = sum(1 for name in tensors if name.startswith(SAMPLER_PREFIX))
    if saved != world:
        raise ValueError(f"checkpoint {path} holds the sampler states of {saved} process(es), this run has {world}; "
                         f"resume with {saved} process(es) (torchrun --nproc_per_node={saved}) or start a new run")
    return tensors[f"{SAMPLER_PREFIX}{rank}"]


def model_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
