"""Training of certified classifiers on the loop the denoiser trainer runs too (:mod:`pnp_stable.training.loop`):
Adam with a one-cycle schedule, the margin loss at a training radius ε, calibration of the blocks' norms to their
guaranteed bounds every ``calibrate_every`` steps, checkpoints every few minutes (safetensors with a digest; exact
resume: batches are drawn from one saved generator), a clean stop on SIGINT/SIGTERM, a stop on a non-finite loss,
weights or optimiser moment that keeps the last finite checkpoint, and the certificate written into the exported
weights."""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .._outputs import check_training_outputs
from ..training.checkpoint import load_checkpoint, model_tensors, option_change, save_checkpoint
from ..training.loop import TrainingLoop
from .baseline import SpectralResNetClassifier
from .data import DATASETS, augmented, load_dataset
from .network import LipschitzClassifier
from .robustness import certified_accuracy, margin_loss
from .storage import save_classifier

__all__ = ["CLASSIFIERS", "ClassifierConfig", "ClassifierTrainer"]

CLASSIFIERS = {"lipschitz": LipschitzClassifier, "spectral-resnet": SpectralResNetClassifier}
#: Model arguments that the dataset sets, never the architecture.
FIXED_BY_DATASET = ("in_channels", "classes", "image_size")
#: Options that may change between a run and its resume: where files are, and how often it logs or saves.
RESUMABLE_CHANGES = ("data", "out", "checkpoint", "checkpoint_minutes", "log_every", "download", "overwrite")


@dataclass
class ClassifierConfig:
    data: str
    out: str
    dataset: str = "fashion-mnist"
    model: str = "lipschitz"
    architecture: dict = field(default_factory=lambda: dict(widths=[32, 64], depths=[3, 3]))
    steps: int = 5000
    batch: int = 128
    lr: float = 2e-3
    eps: float = 0.5
    eps_ramp: float = 0.0
    temperature: float = 8.0
    seed: int = 0
    calibrate_every: int = 200
    checkpoint: str | None = None
    checkpoint_minutes: float = 5.0
    log_every: int = 100
    overwrite: bool = False  # replace an earlier run's weights and checkpoint (else refused unless resuming)
    precision: str = "fp32"
    download: bool = False
    augment: bool = False

    def __post_init__(self):
        if self.model not in CLASSIFIERS:
            raise ValueError(f"model must be one of {sorted(CLASSIFIERS)}, got '{self.model}'")
        accepted = inspect.signature(CLASSIFIERS[self.model]).parameters
        foreign = sorted(key for key in self.architecture if key not in accepted or key in FIXED_BY_DATASET)
        if foreign:
            raise ValueError(f"architecture options {', '.join(foreign)} do not apply: the {self.model} model has none "
                             f"(it takes {', '.join(k for k in accepted if k not in FIXED_BY_DATASET)})")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got '{self.dataset}'")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got '{self.precision}'")
        for name in ("steps", "batch", "calibrate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0 <= self.eps_ramp <= 1:
            raise ValueError(f"eps_ramp is the fraction of the steps over which the training radius grows from 0 to eps: "
                             f"it must lie in [0, 1], got {self.eps_ramp}")
        if not (self.eps >= 0 and self.temperature > 0 and self.lr > 0):
            raise ValueError(f"eps must be ≥ 0 and temperature, lr > 0; got {self.eps}, {self.temperature}, {self.lr}")


class ClassifierTrainer(TrainingLoop):
    """Trains ``config.model`` on the training split of ``config.dataset`` (``dataset`` may also be passed in, a
    TensorDataset of images in [0, 1] and labels, e.g. a synthetic stand-in)."""

    def __init__(self, config: ClassifierConfig, resume: bool = False, progress: bool = True, dataset=None):
        self.config = config
        channels, size, names = DATASETS[config.dataset]
        torch.manual_seed(config.seed)
        if dataset is None:
            dataset = load_dataset(config.dataset, config.data, train=True, download=config.download)
        self.images, self.labels = dataset.tensors
        if tuple(self.images.shape[1:]) != (channels, size, size):
            raise ValueError(f"{config.dataset} images must be [N, {channels}, {size}, {size}], got {tuple(self.images.shape)}")
        self.model = CLASSIFIERS[config.model](in_channels=channels, classes=len(names), image_size=size, **config.architecture)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=config.lr, total_steps=config.steps)
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.step = 0
        self.saved_step: int | None = None
        self.progress = progress
        self.log: list[dict] = []
        self.train_seconds = 0.0  # training wall time, kept across resumes
        check_training_outputs(self.checkpoint_path, Path(config.out), resume, config.overwrite)
        if resume:
            self.resume()

    def save_checkpoint(self) -> None:
        config = {**asdict(self.config), "elapsed_s": self.train_seconds}
        save_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.scheduler, self.generator.get_state(),
                        self.step, config)
        self.saved_step = self.step

    def resume(self) -> None:
        tensors, meta = load_checkpoint(self.checkpoint_path)
        stored = dict(meta["config"])
        self.train_seconds = float(stored.pop("elapsed_s", 0.0))
        defaults = asdict(ClassifierConfig(data=self.config.data, out=self.config.out))
        current = json.loads(json.dumps(asdict(self.config)))
        earlier = None
        if stored.get("model", defaults["model"]) == current["model"] and "architecture" in stored:
            # compared as built, so that an option written out at its default equals the option left out
            fixed = {key: self.model.config[key] for key in FIXED_BY_DATASET}
            try:
                earlier = CLASSIFIERS[current["model"]](**fixed, **stored["architecture"]).config
            except (TypeError, ValueError):
                pass  # options this version no longer builds: compared as written
            if earlier == self.model.config:
                stored["architecture"] = current["architecture"]
        changed = sorted(key for key in current if key not in RESUMABLE_CHANGES
                         and stored.get(key, defaults[key]) != current[key])  # fields added since: their defaults
        if changed:
            built = {"architecture": (earlier, self.model.config)} if earlier is not None else {}  # defaults filled in
            details = "; ".join(option_change(key, *built.get(key, (stored.get(key, defaults[key]), current[key])))
                                for key in changed)
            raise ValueError(f"checkpoint {self.checkpoint_path} was written with other {', '.join(changed)} "
                             f"({details}); resume with the same options or start a new run")
        self.model.load_state_dict(model_tensors(tensors))
        self.optimizer.load_state_dict(meta["optimizer_state"])
        self.scheduler.load_state_dict(meta["scheduler"])
        self.generator.set_state(tensors["rng.sampler.0"])
        self.step = self.saved_step = meta["step"]

    def training_radius(self) -> float:
        """ε of the margin loss at the current step: ``eps``·step/(``eps_ramp``·steps) during the first ``eps_ramp``
        of the steps (a linear ramp from 0), ``eps`` after it."""
        ramp = self.config.eps_ramp * self.config.steps
        return self.config.eps * min(1.0, self.step / ramp) if ramp else self.config.eps

    def train_step(self) -> torch.Tensor:
        """One Adam step on a batch drawn with replacement: margin loss at :meth:`training_radius` with the
        training-time K."""
        if self.step % self.config.calibrate_every == 0:
            self._calibrate()
        index = torch.randint(len(self.images), (self.config.batch,), generator=self.generator)
        images, labels = self.images[index], self.labels[index]
        if self.config.augment:
            images = augmented(images, self.generator)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=self.config.precision == "bf16"):
            logits = self.model(images)
        loss = margin_loss(logits.float(), labels, self.model.training_pairwise_lipschitz(), self.training_radius(),
                           self.config.temperature)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss

    def export(self, test=None, eps_list=(0.1, 0.25, 0.5, 1.0)) -> Path:
        """Write the eval-mode weights with the certificate, the training configuration, the step count and wall
        time, and (given a test TensorDataset) clean and certified test accuracy in the metadata."""
        self.model.eval()
        info = {"training": json.dumps(asdict(self.config), sort_keys=True), "steps": str(self.step),
                "train_seconds": f"{self.train_seconds:.0f}", "threads": str(torch.get_num_threads())}
        if test is not None:
            images, labels = test.tensors
            loader = [(images[i : i + 1000], labels[i : i + 1000]) for i in range(0, len(labels), 1000)]
            info["test_accuracy"] = json.dumps(certified_accuracy(self.model, loader, eps_list))
        return save_classifier(self.model, self.config.out, extra=info)
