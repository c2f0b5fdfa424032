"""Training certified denoisers: patch sampling, the trainer, safetensors checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .data import PatchSampler, list_images, load_folder
from .trainer import TrainConfig, Trainer, denoising_loss, validation_psnr

__all__ = ["PatchSampler", "TrainConfig", "Trainer", "denoising_loss", "list_images", "load_checkpoint", "load_folder", "save_checkpoint",
           "validation_psnr"]
