"""Certified robust image classification: the paper's first application (Sherry et al. 2024, §6).

A sub-package of :mod:`pnp_stable` rather than a sibling: the classifier is built from the same certified pieces
as the denoisers (:class:`~pnp_stable.denoisers.blocks.NonexpansiveBlock`, its integrators and the guaranteed
convolution norm bounds of :mod:`pnp_stable.denoisers.spectral`) and reuses the checkpoint and safetensors code,
so one install and one certificate machinery serve both.
"""

from .baseline import SpectralResNetClassifier
from .data import FASHION_MNIST_CLASSES, cifar10, fashion_mnist, load_dataset, synthetic
from .network import LipschitzClassifier
from .robustness import certified_accuracy, certified_radius, lipschitz_search, margin_loss, pgd_l2, robust_accuracy
from .storage import classifier_file, list_classifiers, load_classifier, save_classifier

__all__ = [
    "FASHION_MNIST_CLASSES", "LipschitzClassifier", "SpectralResNetClassifier", "certified_accuracy", "certified_radius",
    "cifar10", "classifier_file", "fashion_mnist", "lipschitz_search", "list_classifiers", "load_classifier",
    "load_dataset", "margin_loss", "pgd_l2", "robust_accuracy", "save_classifier", "synthetic",
]
