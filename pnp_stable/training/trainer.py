"""Training of certified denoisers: Adam (or SGD) with a one-cycle schedule, the adaptive spectral-norm
update at every step (one power-iteration step per layer in the forward, calibration to the guaranteed
bound every ``calibrate_every`` steps), validation PSNR, exact resume (also under torchrun: every process's sampler
state is saved) and the final certificate written into the weights' metadata; checkpoints every few minutes, the
clean stop on SIGINT/SIGTERM and the stop on a non-finite loss or weights that keeps the last finite checkpoint are
the loop of :mod:`pnp_stable.training.loop`, which the classifier trainer runs too."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from .._outputs import check_training_outputs
from .._modules import device_of, evaluation_mode
from ..denoisers.averaged import AveragedDenoiser
from ..denoisers.baselines import DnCNNBaseline
from ..denoisers.serialization import read_denoiser_tensors, save_denoiser
from ..metrics import psnr
from .checkpoint import load_checkpoint, model_tensors, option_change, sampler_state, save_checkpoint
from .data import PatchSampler, fingerprint, load_folder, split_holdout
from .growth import fits, grow_state
from .loop import TrainingDiverged, TrainingLoop

__all__ = ["LOSSES", "MODELS", "PRECISIONS", "TrainConfig", "Trainer", "TrainingDiverged", "denoising_loss", "validation_psnr"]

MODELS = {"averaged": AveragedDenoiser, "dncnn": DnCNNBaseline}
LOSSES = ("mse", "noise-relative")
PRECISIONS = ("fp32", "bf16")


def validation_psnr(denoiser, images: list[torch.Tensor], sigma: float, seed: int = 12345) -> float:
    """Mean PSNR of ``denoiser(y, σ)`` (a module in eval mode, its modes restored after) over uint8 ``images``
    [C, H, W], y = x + σ·n with n from ``seed``: the trainer's validation, also usable for any other denoiser on
    the same images and noise."""
    if not images:
        raise ValueError("validation_psnr needs at least one image")
    g = torch.Generator().manual_seed(seed)
    values = []
    device = device_of(denoiser)
    with torch.no_grad(), evaluation_mode(denoiser):
        for image in images:
            clean = image[None].float() / 255
            noisy = clean + sigma * torch.randn(clean.shape, generator=g)  # drawn on the CPU: the same on any device
            values.append(float(psnr(denoiser(noisy.to(device), sigma).cpu(), clean)[0]))
    return sum(values) / len(values)


def denoising_loss(output: torch.Tensor, clean: torch.Tensor, sigma: torch.Tensor, kind: str = "mse",
                   floor: float = 1 / 255) -> torch.Tensor:
    """'mse': mean of ‖D(y) − x‖² per pixel. 'noise-relative': each patch's MSE divided by σ² + floor², so
    every noise level counts by its error relative to the noise (a mean PSNR gain) instead of low noise levels
    being drowned by the larger errors at high σ; the floor keeps σ = 0 (where D should be the identity) finite."""
    per_patch = (output - clean).pow(2).flatten(1).mean(1)
    if kind == "noise-relative":
        per_patch = per_patch / (sigma.reshape(-1).to(per_patch) ** 2 + floor**2)
    elif kind != "mse":
        raise ValueError(f"loss must be one of {LOSSES}, got '{kind}'")
    return per_patch.mean()


#: Options that change how a run is executed or reported, not what it computes: a resume may change them.
EXECUTION_ONLY = ("compile", "checkpoint_minutes", "log_every", "validate_every", "overwrite")
#: Options naming files or folders: compared as absolute paths from the working directory ('dir/', 'dir' and '/abs/dir' are one folder).
PATH_OPTIONS = ("data", "val", "out", "init")


@dataclass
class TrainConfig:
    data: list[str]
    out: str
    channels: int = 1
    val: str | None = None
    sigma: float | list[float] = 25 / 255
    patch: int = 40
    batch: int = 32
    steps: int = 2000
    lr: float = 2e-3
    optimizer: str = "adam"
    seed: int = 0
    calibrate_every: int = 100
    validate_every: int = 500
    val_images: int = 10
    val_sigma: float = 25 / 255
    checkpoint: str | None = None
    checkpoint_minutes: float = 5.0
    log_every: int = 50
    architecture: dict = field(default_factory=lambda: dict(width=32, depth=8))
    model: str = "averaged"
    init: str | None = None
    loss: str = "mse"
    loss_floor: float = 1 / 255
    precision: str = "fp32"
    holdout: int = 0
    compile: bool = False
    overwrite: bool = False  # start over where ``out`` or its checkpoint already exists (else refused without resume)

    def __post_init__(self):
        if isinstance(self.data, (str, os.PathLike)):  # one folder, not a sequence of one-character folder names
            self.data = [str(self.data)]
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got '{self.model}'")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got '{self.loss}'")
        if not self.loss_floor > 0:
            raise ValueError(f"loss_floor must be positive (it keeps σ = 0 finite), got {self.loss_floor}")
        if self.holdout < 0 or (self.holdout and self.val):
            raise ValueError(f"holdout takes the last {self.holdout} training images as the validation set: it must be ≥ 0 "
                             "and cannot be combined with a validation folder (val)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got '{self.precision}'")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer}")
        if isinstance(self.sigma, (list, tuple)) and (len(self.sigma) != 2 or not self.sigma[0] <= self.sigma[1]):
            raise ValueError(f"sigma must be a number or a range [low, high] with low ≤ high, got {self.sigma}")


class Trainer(TrainingLoop):
    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True):
        self.config = config
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        torch.manual_seed(config.seed)
        self.model = MODELS[config.model](channels=config.channels, **config.architecture)
        check_training_outputs(self.checkpoint_path, Path(self.config.out), resume, self.config.overwrite)
        self.init_steps = 0  # steps behind the --init weights (fine-tuning); a resumed run reads it from its checkpoint
        if config.init and not resume:
            self._initialise_from(config.init)
        self.net = self.model
        if self.world > 1:
            if config.compile:
                raise ValueError("compile applies to single-process training; drop --compile under torchrun")
            self.net = torch.nn.parallel.DistributedDataParallel(self.model)
        elif config.compile:  # the training forward only: validation, calibration and certificates stay eager fp32
            self.net = torch.compile(self.model.forward_unchecked if isinstance(self.model, AveragedDenoiser) else self.model)
        if config.optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=config.lr, total_steps=config.steps)
        self.data_fingerprint = fingerprint([*config.data, *([config.val] if config.val else [])])
        images = [im for folder in config.data for im in load_folder(folder, config.channels)]
        images, held_out = split_holdout(images, config.holdout)
        sigma = tuple(config.sigma) if isinstance(config.sigma, (list, tuple)) else config.sigma
        self.sampler = PatchSampler(images, config.patch, config.batch, sigma, seed=config.seed + 1000 * self.rank)
        if config.val:
            held_out = load_folder(config.val, config.channels)
        self.val_images = held_out[: config.val_images]
        if config.validate_every and len(self.val_images) < config.val_images and self.rank == 0:
            warnings.warn(f"only {len(self.val_images)} validation image(s) for val_images = {config.val_images}: the "
                          "validation PSNR uses those" if self.val_images else "no validation images (give holdout N or "
                          "a val folder): no validation PSNR is recorded", stacklevel=2)
        self.step = 0
        self.saved_step: int | None = None  # step of the checkpoint on disk that this run wrote or resumed from
        self.progress = progress and self.rank == 0
        self.log: list[dict] = []
        self.curve: list[list[float]] = []  # [step, validation PSNR] of the whole run, kept across resumes
        self.train_seconds = 0.0  # wall time of the whole run's training loops, kept across resumes
        if resume:
            self.resume()

    # --- state -------------------------------------------------------------------------
    def _sampler_states(self) -> list[torch.Tensor]:
        """Every process's sampler state in rank order (under torchrun a collective: every rank must call it)."""
        state = self.sampler.state()
        if self.world == 1:
            return [state]
        device = self._collective_device()
        gathered = [torch.empty_like(state, device=device) for _ in range(self.world)]
        dist.all_gather(gathered, state.to(device))
        return [s.cpu() for s in gathered]

    def save_checkpoint(self) -> None:
        """Write the checkpoint (rank 0) with the sampler state of every rank; every rank must call it."""
        states = self._sampler_states()
        if self.rank == 0:
            save_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.scheduler, states,
                            self.step, asdict(self.config), self.history())
        self.saved_step = self.step

    def resume(self) -> None:
        tensors, meta = load_checkpoint(self.checkpoint_path)
        defaults = asdict(TrainConfig(data=self.config.data, out=self.config.out))
        current = json.loads(json.dumps(asdict(self.config)))
        stored = {key: meta["config"].get(key, defaults[key]) for key in current}  # fields added since: defaults
        for key in EXECUTION_ONLY:
            stored.pop(key), current.pop(key)
        for options in (stored, current):
            for key in PATH_OPTIONS:
                value = options.get(key)
                if isinstance(value, str):
                    options[key] = os.path.abspath(value)
                elif isinstance(value, list):
                    options[key] = [os.path.abspath(v) for v in value]
        changed = sorted(key for key in current if stored[key] != current[key])
        if changed:
            details = "; ".join(option_change(key, stored[key], current[key]) for key in changed)
            raise ValueError(f"checkpoint {self.checkpoint_path} was written with other {', '.join(changed)} ({details}); "
                             "resume with the same options or start a new run")
        stored_data = meta["history"].get("data")
        if stored_data is not None and stored_data != self.data_fingerprint:
            raise ValueError(f"the image folders of {self.checkpoint_path} changed since it was written (files added, "
                             "removed or resized): the sampler and the held-out set would no longer be the run's; "
                             "restore them, or start a new run")
        self.model.load_state_dict(model_tensors(tensors))
        self.optimizer.load_state_dict(meta["optimizer_state"])
        self.scheduler.load_state_dict(meta["scheduler"])
        self.sampler.restore(sampler_state(tensors, self.checkpoint_path, self.rank, self.world))
        self.step = self.saved_step = meta["step"]
        self.curve = meta["history"].get("curve", [])
        self.train_seconds = float(meta["history"].get("train_seconds", 0.0))
        if "init_steps" in meta["history"]:
            self.init_steps = int(meta["history"]["init_steps"])
        elif self.config.init:  # a checkpoint written before it kept this: read it from the --init file
            metadata = read_denoiser_tensors(self.config.init)[0]
            self.init_steps = int(metadata.get("total_steps", metadata.get("steps", 0)))

    def history(self) -> dict:
        """What the checkpoint keeps of the run besides its state: the validation curve, the training time, the
        steps behind its --init weights and the fingerprint of its image folders."""
        return {"curve": self.curve, "train_seconds": round(self.train_seconds, 1), "init_steps": self.init_steps,
                "data": self.data_fingerprint}

    def _initialise_from(self, path: str) -> None:
        """Fine-tuning: start from the tensors of a weights file; parameters it lacks keep their initialisation.
        A wider network (``--width`` above the file's) starts from the trained function (see :mod:`.growth`)."""
        metadata, tensors = read_denoiser_tensors(path)
        stored_class = metadata.get("class")
        if stored_class != type(self.model).__name__:
            kinds = {cls.__name__: name for name, cls in MODELS.items()}
            hint = (f"train it with --model {kinds[stored_class]}" if stored_class in kinds
                    else "the trainer fine-tunes only " + " or ".join(f"--model {name}" for name in MODELS) + " files")
            raise ValueError(f"--init {path} holds {stored_class} weights, and this run trains "
                             f"{type(self.model).__name__} (--model {self.config.model}); {hint}")
        self.init_steps = int(metadata.get("total_steps", metadata.get("steps", 0)))
        own = self.model.state_dict()
        foreign = sorted(set(tensors) - set(own))
        too_large = sorted(k for k in tensors.keys() & own.keys() if not fits(tensors[k].shape, own[k].shape))
        trained = json.loads(metadata.get("config", "{}"))
        trained_channels = trained.get("channels", self.config.channels)
        layout = {key: (trained.get(key), self.model.config.get(key)) for key in ("depth", "scales", "block", "activation")}
        changed = {key: pair for key, pair in layout.items() if pair[0] != pair[1]}
        if changed:
            raise ValueError(f"--init {path} has another block layout ({', '.join(f'{k}: file {a}, here {b}' for k, (a, b) in changed.items())}); "
                             "fine-tuning keeps --depth, --scales, --block and --activation as trained (only --width may "
                             "grow)")
        if foreign or too_large or trained_channels != self.config.channels:
            raise ValueError(f"--init {path} does not fit this architecture (unknown tensors {foreign}, larger "
                             f"tensors {too_large}, channels {trained_channels}); use the depth and channels it was "
                             "trained with and at least its width")
        self.model.load_state_dict(grow_state(tensors, own, self.config.seed), strict=False)

    # --- loop (TrainingLoop.run) ------------------------------------------------------------
    @staticmethod
    def _collective_device() -> torch.device:
        """Where a collective's tensors must live: the current GPU under NCCL, else the CPU (gloo)."""
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

    def _agree(self, *flags: bool) -> list[bool]:
        """Each flag, true when it is true on any process: every rank then takes the same branch (saving a
        checkpoint is a collective)."""
        values = torch.tensor([float(flag) for flag in flags])
        if self.world > 1:
            values = values.to(self._collective_device())
            dist.all_reduce(values)
        return [bool(value > 0) for value in values.cpu()]

    def _extend_record(self, record: dict, bar) -> None:
        """The validation PSNR every ``validate_every`` steps, also kept in the run's curve."""
        if self.config.validate_every and self.val_images and self.step % self.config.validate_every == 0:
            record["val_psnr"] = self.validate()
            self.curve.append([self.step, round(record["val_psnr"], 4)])
            bar.set_postfix(val_psnr=f"{record['val_psnr']:.2f}")

    def validate(self, sigma: float | None = None) -> float:
        """Mean PSNR of the certified (eval-mode) network on the validation images at noise level ``sigma``
        (default ``val_sigma``; the same noise draw every call); NaN without validation images."""
        if not self.val_images:
            return float("nan")
        return validation_psnr(self.model, self.val_images, self.config.val_sigma if sigma is None else sigma)

    def train_step(self) -> torch.Tensor:
        """One optimisation step on the next batch (forward in the configured precision, fp32 loss), after the norm
        calibration that is due every ``calibrate_every`` steps; returns the loss. Checks, logs and checkpoints are
        :meth:`run`'s; the one-cycle schedule refuses steps beyond ``steps``."""
        if self.step % self.config.calibrate_every == 0:
            self._calibrate()
        noisy, clean, sigma = next(self.sampler)
        with self._forward_precision():
            output = self.net(noisy, sigma)
        loss = denoising_loss(output.float(), clean, sigma, self.config.loss, self.config.loss_floor)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss

    def _forward_precision(self):
        """The training forward's arithmetic. 'bf16': torch.autocast runs the convolutions in bfloat16 (the
        weights, Adam's state, the loss, the power iterations and the norm bounds stay fp32; see
        CertifiedConv._weight_precision); the certificate and validation describe the fp32 eval network."""
        device = device_of(self.model).type
        return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

    def export(self, extra: dict[str, str] | None = None) -> Path:
        """Write the certified weights with the training configuration and data in the metadata."""
        info = {"training": json.dumps(asdict(self.config), sort_keys=True), "steps": str(self.step),
                "total_steps": str(self.init_steps + self.step), "train_seconds": f"{self.train_seconds:.0f}",
                "val_curve": json.dumps(self.curve)}
        if self.val_images:
            info["val_psnr"] = f"{self.validate():.4f}"
        info.update(extra or {})
        return save_denoiser(self.model.eval(), self.config.out, extra=info)
