"""Probes of the ceiling of certified gray denoisers on the campaign's held-out images (issue #22, acceptance 5).

Three questions, each answered on the last ``--holdout`` Train400 images with the trainer's validation noise
(:func:`pnp_stable.training.trainer.validation_psnr`'s seed), so the numbers compare with the campaign's curves:

1. **Combinations.** For α₁- and α₂-averaged D₁, D₂ and w ∈ [0, 1], wD₁ + (1 − w)D₂ is max(α₁, α₂)-averaged
   (a convex combination of non-expansive maps is non-expansive). PSNR of the best w for each pair.
2. **Compositions.** D₂ ∘ D₁ is averaged with α = (α₁ + α₂ − 2α₁α₂)/(1 − α₁α₂) (Combettes & Yamada 2015). PSNR of
   D₂(D₁(y), σ') for a few noise levels σ' passed to the second denoiser (untrained for this use).
3. **Local expansiveness.** ‖J_D(y)‖₂ at noisy held-out images by power iteration on JᵀJ (forward- and
   reverse-mode products): a certified D has ‖J_D‖₂ ≤ 1 everywhere; an unconstrained one may use more.
4. **Secant gains**, for denoisers without derivatives (BM3D): ‖D(y + δ) − D(y)‖/‖δ‖ along a power iteration
   δ ← ε·σ√n·(D(y + δ) − D(y))/‖D(y + δ) − D(y)‖ from a random δ, at perturbations of RMS ε·σ; the largest ratio
   met is a lower bound on D's Lipschitz constant (any ratio above 1 proves D expansive), ≤ 1 for a certified D.

Outputs of each (model, ensemble) are cached as ``--cache``/NAME-eENS.pt, so a rerun only combines.

    OMP_NUM_THREADS=1 .venv/bin/python training/screening/certified_ceiling.py \
        --pairs convex-ridge-gray:averaged-sll-gray convex-ridge-gray:averaged-sll-gray@8 convex-ridge-gray:dncnn-gray \
        --compose convex-ridge-gray:averaged-sll-gray convex-ridge-gray:dncnn-gray \
        --jacobian dncnn-gray averaged-sll-gray --ensembles convex-ridge-gray@8
    OMP_NUM_THREADS=1 .venv/bin/python training/screening/certified_ceiling.py \
        --secant bm3d dncnn-gray averaged-sll-gray convex-ridge-gray
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pnp_stable import load_denoiser  # noqa: E402
from pnp_stable.metrics import psnr  # noqa: E402
from pnp_stable.training.data import load_folder, split_holdout  # noqa: E402

VALIDATION_SEED = 12345  # validation_psnr's noise
WEIGHTS = [round(0.1 * k, 1) for k in range(11)]
SECOND_SIGMAS = [0, 2, 4, 6, 9]  # σ'·255 for the second denoiser of a composition


def parse_model(spec: str) -> tuple[str, int]:
    """'name' or 'name@ENSEMBLE' (the number of grid symmetries averaged, 1, 2, 4 or 8)."""
    name, _, ensemble = spec.partition("@")
    return name, int(ensemble or 1)


def noisy_pairs(images, sigma: float):
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    for image in images:
        clean = image[None].float() / 255
        yield clean, clean + sigma * torch.randn(clean.shape, generator=generator)


def outputs(spec: str, images, sigma: float, cache: Path) -> list[torch.Tensor]:
    name, ensemble = parse_model(spec)
    path = cache / f"{name}-e{ensemble}.pt"
    if path.exists():
        return torch.load(path)
    model = load_denoiser(name, ensemble=ensemble).eval()
    with torch.no_grad():
        result = [model(noisy, sigma) for _, noisy in noisy_pairs(images, sigma)]
    torch.save(result, path)
    return result


def mean_psnr(estimates, cleans) -> float:
    return sum(float(psnr(e, c)[0]) for e, c in zip(estimates, cleans)) / len(cleans)


def jacobian_norm(model, noisy: torch.Tensor, sigma: float, iterations: int = 25) -> float:
    """‖J‖₂ of y ↦ model(y, σ) at ``noisy``: power iteration on JᵀJ, then ‖Jv‖ for the last unit vector v."""
    def apply(z):
        return model(z, sigma)

    vector = torch.randn(noisy.shape, generator=torch.Generator().manual_seed(1))
    vector /= vector.norm()
    _, pullback = torch.func.vjp(apply, noisy)
    for _ in range(iterations):
        _, forward = torch.func.jvp(apply, (noisy,), (vector,))
        vector = pullback(forward)[0]
        vector /= vector.norm()
    return float(torch.func.jvp(apply, (noisy,), (vector,))[1].norm())


def secant_gain(denoise, noisy: torch.Tensor, radius: float, iterations: int = 12) -> float:
    """The largest ‖D(y + δ) − D(y)‖/‖δ‖ along a power iteration on secants of norm ``radius`` (docstring, 4)."""
    base = denoise(noisy)
    delta = torch.randn(noisy.shape, generator=torch.Generator().manual_seed(1))
    delta *= radius / delta.norm()
    best = 0.0
    for _ in range(iterations):
        change = denoise(noisy + delta) - base
        best = max(best, float(change.norm()) / radius)
        delta = change * (radius / change.norm())
    return best


def secant_model(name: str):
    """BM3D single-threaded (its multithreaded aggregation is not deterministic: bm3d_threads.md), else a model."""
    if name == "bm3d":
        from pnp_stable.denoisers.baselines import BM3DDenoiser

        return BM3DDenoiser(threads=1)
    return load_denoiser(name).eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/train/gray/Train400")
    parser.add_argument("--holdout", type=int, default=40)
    parser.add_argument("--sigma", type=float, default=25.0, help="noise level ×255")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/certified-ceiling"))
    parser.add_argument("--ensembles", nargs="*", default=[], help="models whose PSNR alone is printed")
    parser.add_argument("--pairs", nargs="*", default=[], help="FIRST:SECOND, each 'name' or 'name@ENSEMBLE'")
    parser.add_argument("--compose", nargs="*", default=[], help="FIRST:SECOND, SECOND applied to FIRST's output")
    parser.add_argument("--jacobian", nargs="*", default=[], help="models whose local ‖J‖₂ is estimated")
    parser.add_argument("--jacobian-images", type=int, default=6)
    parser.add_argument("--secant", nargs="*", default=[], help="denoisers ('bm3d' or a model) whose secant gains are estimated")
    parser.add_argument("--secant-scales", nargs="*", type=float, default=[0.1, 0.01], help="ε: perturbation RMS / σ")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    sigma = args.sigma / 255
    images = split_holdout(load_folder(args.data, 1), args.holdout)[1]
    cleans = [clean for clean, _ in noisy_pairs(images, sigma)]

    for spec in args.ensembles:
        print(f"{spec}: {mean_psnr(outputs(spec, images, sigma, args.cache), cleans):.3f} dB", flush=True)
    for pair in args.pairs:
        first, second = (outputs(spec, images, sigma, args.cache) for spec in pair.split(":"))
        scores = {w: mean_psnr([w * a + (1 - w) * b for a, b in zip(first, second)], cleans) for w in WEIGHTS}
        best = max(scores, key=scores.get)
        print(f"{pair}: w = 1 {scores[1.0]:.3f}, w = 0 {scores[0.0]:.3f}, best w = {best} {scores[best]:.3f} dB",
              flush=True)
    for pair in args.compose:
        first_spec, second_spec = pair.split(":")
        first = outputs(first_spec, images, sigma, args.cache)
        name, ensemble = parse_model(second_spec)
        second = load_denoiser(name, ensemble=ensemble).eval()
        with torch.no_grad():
            row = {s: mean_psnr([second(x, s / 255) for x in first], cleans) for s in SECOND_SIGMAS}
        print(f"{second_spec} ∘ {first_spec}: " + ", ".join(f"σ' = {s}: {v:.3f}" for s, v in row.items()) + " dB",
              flush=True)
    for spec in args.jacobian:
        name, ensemble = parse_model(spec)
        model = load_denoiser(name, ensemble=ensemble).eval().requires_grad_(False)
        norms = [jacobian_norm(model, noisy, sigma)
                 for _, noisy in list(noisy_pairs(images, sigma))[: args.jacobian_images]]
        print(f"{spec}: local ‖J‖₂ on {len(norms)} images " + ", ".join(f"{n:.3f}" for n in norms), flush=True)
    for name in args.secant:
        model = secant_model(name)
        for scale in args.secant_scales:
            with torch.no_grad():
                gains = [secant_gain(lambda z: model(z, sigma), noisy, scale * sigma * noisy.numel() ** 0.5)
                         for _, noisy in list(noisy_pairs(images, sigma))[: args.jacobian_images]]
            print(f"{name}: secant gains at perturbation RMS {scale:g}σ on {len(gains)} images "
                  + ", ".join(f"{g:.3f}" for g in gains), flush=True)


if __name__ == "__main__":
    main()
