"""The ``pnp-stable`` command line: deblur, denoise, certify, models, demo, train, classify and train-classifier.

Every user error ends with exit code 2 and one line on stderr that says what to do (running out of memory
too); progress goes to stderr: a bar on a terminal, otherwise a plain line every 10 s of a long iteration
(``--quiet`` silences both).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import warnings
from pathlib import Path

from . import __version__
from ._argtypes import (EXIT_USAGE, OneLineParser, level, nonnegative_float, nonnegative_int, positive_float, positive_int,
                        positive_level, seed, solver_name, tile_size)
from .theory import format_bound


class CommandError(ValueError):
    """A user error reported as one line with exit code 2."""


def _progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _progress_mode(args) -> bool | str:
    """The PnP loop's ``progress``: a bar on a terminal, plain lines ('log') on a log or pipe, none with --quiet."""
    if args.quiet:
        return False
    return True if sys.stderr.isatty() else "log"


def _device(name: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` for a GPU this machine has; anything else is a one-line error."""
    from ._validation import check_device

    if re.fullmatch(r"cpu|cuda(?::\d+)?", name) is None:
        raise CommandError(f"unsupported device '{name}'; use cpu, cuda or cuda:N")
    return str(check_device(name))


# --- sub-commands -------------------------------------------------------------------------------
def _write_image(x, path: Path, source: Path) -> str:
    """Save ``x`` at the bit depth of the input file ``source`` where the format holds it (a 16-bit input gives a
    16-bit PNG/TIFF; .npy is float32), else at 8 bits and say so; values outside [0, 1] are clipped and counted,
    except in a .npy array, which keeps them."""
    from .io import file_bit_depth, holds_sixteen_bits, save_image

    suffix = path.suffix.lower()
    depth, notes = file_bit_depth(source), []
    if depth == 16 and suffix != ".npy":  # an array keeps float32 whatever the depth
        if holds_sixteen_bits(suffix, x.shape[1]):
            notes.append("16-bit, as the input")
        else:
            depth = 8
            notes.append(f"8-bit although {source.name} has 16 bits: {suffix} cannot hold them "
                         f"{'in colour ' if suffix == '.png' else ''}(use .tif or .npy)")
    outside = int(((x < 0) | (x > 1)).sum())
    if outside and suffix != ".npy":
        notes.append(f"{outside} values outside [0, 1] clipped")
    save_image(x, path, clip=suffix != ".npy", bit_depth=depth)
    return f"wrote {path}" + (f" ({'; '.join(notes)})" if notes else "")


@contextlib.contextmanager
def _processes(args):
    """The deepinv ``DistributedContext`` of a ``torchrun`` launch (``--workers``), whose processes share the
    denoiser's tiles; None in a plain run."""
    if "WORLD_SIZE" not in os.environ:
        yield None
        return
    from deepinv.distributed import DistributedContext

    with DistributedContext(device_mode="cpu" if args.device == "cpu" else "gpu") as context:
        yield context


def _leads(context) -> bool:
    """Whether this process reports and writes files: the only one, or rank 0 of a launch."""
    return context is None or context.rank == 0


def _launch_workers(args, argv: list[str]) -> int | None:
    """With ``--workers N`` (N > 1) outside a launch: this command again in N processes (torch's elastic launcher,
    standalone rendezvous on this machine, each with cores/N threads unless OMP_NUM_THREADS is set), which share the
    denoiser's tiles; the leading process's exit status. None: run here."""
    workers = getattr(args, "workers", 1)
    if workers <= 1 or "WORLD_SIZE" in os.environ:
        return None
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    rest, skip = [], False
    for token in argv:
        if skip or token.startswith("--workers="):
            skip = False
            continue
        skip = token == "--workers"
        if not skip:
            rest.append(token)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # failures are reported below
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    try:
        elastic_launch(config, sys.executable)("-m", "pnp_stable.cli", *rest)
    except ChildFailedError as failed:  # the processes already said why (the leading one, on stderr)
        codes = {rank: failure.exitcode for rank, failure in failed.failures.items()}
        exited = [code for _, code in sorted(codes.items()) if code > 0]  # < 0: stopped by a signal after another failed
        return exited[0] if exited else 1
    return 0


def _boundary(args) -> str:
    """The blur's boundary model: as given, else 'valid' for a real photo (its blur mixed in scene pixels beyond
    the frame; benchmarks/results/boundary.md) and 'circular' for --simulate (which then blurs circularly)."""
    return args.boundary or ("circular" if args.simulate else "valid")


def _kernel_files(spec: str) -> list[Path]:
    """The file a ``file:PATH[:INDEX]`` kernel spec reads (both readings of a PATH holding a colon), so that no
    output overwrites it."""
    if not spec.startswith("file:"):
        return []
    rest = spec[len("file:"):]
    return [Path(rest)] + ([Path(rest.rsplit(":", 1)[0])] if ":" in rest else [])


def _folder_images(source: Path) -> list[Path]:
    """The image files of the folder ``source`` (by suffix, sorted), refused when there are none."""
    from ._outputs import RESULT_SUFFIXES

    images = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in RESULT_SUFFIXES)
    if not images:
        raise CommandError(f"no image files in the folder {source} (looked for {', '.join(RESULT_SUFFIXES)})")
    return images


def _deblur_jobs(args) -> list[tuple[Path, Path]]:
    """(input, output) pairs: IN and --out (default IN_deblurred.png; an --out without a file suffix is a folder that
    gets IN_deblurred.png, as for denoise), or every image in the folder IN, each written to the folder --out
    (default IN_deblurred/ beside IN) as NAME_deblurred.png (.tif and .npy for those inputs: :func:`_result_name`)."""
    source = Path(args.input)
    if not source.is_dir():
        name = _result_name(source, "deblurred")
        if not args.out:
            return [(source, source.with_name(name))]
        out = Path(args.out)
        return [(source, out if out.suffix else out / name)]
    if args.reference or args.plot:
        raise CommandError("--reference and --plot describe one image; deblur the image alone to use them")
    images = _folder_images(source)
    folder = Path(args.out) if args.out else source.resolve().with_name(source.resolve().name + "_deblurred")
    if folder.suffix:
        raise CommandError(f"a folder of inputs needs --out to be a folder, got the file name {folder}")
    if folder.resolve() == source.resolve():
        raise CommandError(f"--out {folder} is the input folder: the results would be read as inputs next time; "
                           "choose another folder")
    return [(image, folder / _result_name(image, "deblurred")) for image in images]


def _result_name(source: Path, what: str) -> str:
    """NAME_WHAT with the input's suffix where it keeps the input's precision (.tif holds 16-bit colour, .npy
    float32), else .png (lossless, where a .jpg would add its own artefacts)."""
    suffix = source.suffix.lower() if source.suffix.lower() in (".tif", ".tiff", ".npy") else ".png"
    return f"{source.stem}_{what}{suffix}"


def _degraded_path(out: Path) -> Path:
    return out.with_name(out.stem + "_degraded" + out.suffix)


def _denoiser_for(args):
    """channels → what ``deblur`` and ``denoise`` take as their denoiser: 'guided' and 'auto' as they are ('auto' is
    their choice by channels and noise level); a named model or file loaded once (so a folder of images loads and
    verifies it once, and a bad name or file is refused before any work)."""
    if args.denoiser in ("guided", "auto"):
        return lambda channels: args.denoiser
    from .denoisers.zoo import load_denoiser

    model = load_denoiser(args.denoiser)
    return lambda channels: model


def cmd_deblur(args) -> int:
    from tqdm.auto import tqdm

    from ._outputs import RESULT_SUFFIXES, check_outputs, plot_suffixes
    from .operators.kernels import kernel_from_spec

    _refuse_empty_paths([args.input])
    if args.denoiser != "guided" and (args.guide is not None or args.guided_rounds is not None):
        raise CommandError("--guide and --guided-rounds belong to --denoiser guided; add it, or drop them")
    folder = Path(args.input).is_dir()
    jobs = _deblur_jobs(args)
    named = [(f"the result of {source.name}" if folder else "--out", out) for source, out in jobs]
    outputs = [(option, out, RESULT_SUFFIXES) for option, out in named]
    outputs += [(f"--simulate's degraded image{f' of {source.name}' if folder else ''}", _degraded_path(out),
                 RESULT_SUFFIXES) for source, out in jobs] if args.simulate else []
    outputs += [("--plot", Path(args.plot), plot_suffixes())] if args.plot else []
    check_outputs([source for source, _ in jobs] + [Path(p) for p in (args.reference,) if p] + _kernel_files(args.kernel),
                  outputs)
    kernel, denoiser_for = kernel_from_spec(args.kernel), _denoiser_for(args)  # refused here, not once per image
    with _processes(args) as context:
        leads = _leads(context)
        if not folder:
            lines = _deblur_one(args, *jobs[0], kernel, denoiser_for, progress=_progress_mode(args) if leads else False,
                                context=context)
            if leads:
                print("\n".join(lines))
            return 0
        failed = []
        for source, out in tqdm(jobs, desc="deblurring", unit="image", disable=not (leads and _progress(args))):
            try:
                lines = _deblur_one(args, source, out, kernel, denoiser_for, progress=False, context=context)
            except ValueError as err:  # one unreadable or unsuitable image does not stop the others
                failed.append(f"{source}: {' '.join(str(err).split())}")
                continue
            if leads:
                print("\n".join([f"== {source}", *lines]), flush=True)
    if leads:
        for message in failed:
            print(f"pnp-stable deblur: skipped {message}", file=sys.stderr)
        print(f"deblurred {len(jobs) - len(failed)} of {len(jobs)} images into {jobs[0][1].parent}")
    return 1 if failed else 0


def _deblur_one(args, source: Path, out: Path, kernel, denoiser_for, progress, context=None) -> list[str]:
    """Deblur one image as the options say (files written by the leading process only); the report's lines."""
    import torch

    from .io import load_image
    from .metrics import psnr
    from .operators.physics import blur
    from .restore import deblur, valid_frame

    device = _device(args.device)
    boundary = _boundary(args)
    image = load_image(source)
    reference = load_image(args.reference) if args.reference else None
    if args.simulate:
        op = blur(kernel, boundary=boundary, img_size=tuple(image.shape[1:]), noise_sigma=args.noise,
                  rng=torch.Generator().manual_seed(args.seed))
        y = op(image)
        if reference is None:  # a 'valid' blur sees the clean image's interior only
            rows, columns = valid_frame(kernel.shape, y.shape) if boundary == "valid" else (slice(None), slice(None))
            reference = image[:, :, rows, columns]
    else:
        y = image
    result = deblur(
        y, kernel, args.noise, solver=args.solver, denoiser=denoiser_for(y.shape[1]), boundary=boundary,
        denoiser_sigma=args.denoiser_sigma, step=args.step, denoiser_weight=args.denoiser_weight,
        max_iter=args.iters, tol=args.tol, guide=args.guide or "bm3d", guided_rounds=args.guided_rounds,
        reference=reference, device=device, progress=progress, accelerate=args.accelerate,
        tile=args.tile, overlap=args.overlap, context=context, ensemble=args.ensemble,
        allow_unsafe_step=args.allow_unsafe_step, relaxation=args.relaxation,
    )
    lines = [f"boundary model: {boundary}", result.summary()]
    broken = sorted({status for status in result.status if status in ("diverged", "non-finite")})
    if broken:  # the best iterate is still written, but the run is no success
        warnings.warn(f"{source.name}: the iteration {' and '.join(broken)} (the best iterate is written); check the "
                      "monitor's verdict, and use a smaller --step or drop --allow-unsafe-step", stacklevel=2)
    if reference is not None:
        lines.append(f"PSNR: degraded {float(psnr(y, reference)[0]):.2f} dB → restored "
                     f"{float(psnr(result.estimate.cpu(), reference)[0]):.2f} dB")
    if not _leads(context):
        return lines
    if args.simulate:
        lines.append(_write_image(y, _degraded_path(out), source))
    lines.append(_write_image(result.estimate.cpu(), out, source))
    if args.plot:
        lines.append(f"wrote {result.history.plot(args.plot)}")
    return lines


def _denoise_targets(inputs: list[Path], out: Path) -> list[Path]:
    """One output file per input: ``out`` itself for one input with a file name, else OUT/NAME_denoised.png (.tif
    and .npy for those inputs);
    two inputs with the same name would share one file, so they are refused."""
    if len(inputs) > 1 and out.suffix:
        raise CommandError(f"{len(inputs)} inputs need --out to be a directory, got the file name {out}")
    if len(inputs) == 1 and out.suffix:
        return [out]
    targets = [out / _result_name(p, "denoised") for p in inputs]
    seen: dict[Path, Path] = {}
    for source, target in zip(inputs, targets):
        if target in seen:
            raise CommandError(f"inputs {seen[target]} and {source} would both be written to {target}; "
                               "rename one or denoise them in separate runs with different --out folders")
        seen[target] = source
    return targets


def cmd_denoise(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from ._outputs import RESULT_SUFFIXES, check_outputs
    from .io import load_image
    from .metrics import psnr
    from .operators.physics import denoising
    from .restore import denoise

    device = _device(args.device)
    inputs = _input_images(args.inputs)
    if args.reference and (len(inputs) > 1 or args.simulate):
        raise CommandError("--reference is the clean version of one noisy input; --simulate uses each clean input "
                           "as its own reference: use one or the other")
    targets = _denoise_targets(inputs, Path(args.out))
    degraded = [("--simulate's noisy image", _degraded_path(target), RESULT_SUFFIXES) for target in targets]
    check_outputs(inputs + [Path(p) for p in (args.reference,) if p],
                  [("--out", target, RESULT_SUFFIXES) for target in targets] + (degraded if args.simulate else []))
    reference = load_image(args.reference) if args.reference else None
    denoiser_for = _denoiser_for(args)
    _check_channels(inputs, denoiser_for, args.denoiser)
    used: dict[str, str] = {}  # each denoiser that ran (gray and colour images take different ones) → certificate
    failed = []
    with _processes(args) as context:
        leads = _leads(context)
        for source, target in tqdm(list(zip(inputs, targets)), desc="denoising", unit="image",
                                   disable=not (leads and _progress(args))):
            try:  # a file whose header read but whose pixels do not (truncated, NaN) does not stop the others
                image = load_image(source)
            except ValueError as err:
                if len(inputs) == 1:
                    raise
                failed.append(f"{source}: {' '.join(str(err).split())}")
                continue
            clean = image if args.simulate else reference
            if args.simulate:  # the same noise on every process
                image = denoising(args.sigma, rng=torch.Generator().manual_seed(args.seed))(image)
            result = denoise(image, args.sigma, denoiser=denoiser_for(image.shape[1]), device=device, tile=args.tile,
                             overlap=args.overlap, context=context, ensemble=args.ensemble)
            if leads:
                if args.simulate:
                    print(_write_image(image, _degraded_path(target), source), flush=True)
                print(_write_image(result.estimate.cpu(), target, source), flush=True)
                if clean is not None:
                    print(f"PSNR ({source.name}): noisy {float(psnr(image, clean)[0]):.2f} dB → denoised "
                          f"{float(psnr(result.estimate.cpu(), clean)[0]):.2f} dB", flush=True)
            used[result.denoiser] = str(result.certificate)  # a named model is labelled by that name
    if leads:
        print("\n".join(f"denoiser {name}: {certificate}" for name, certificate in used.items()))
        for message in failed:
            print(f"pnp-stable denoise: skipped {message}", file=sys.stderr)
        if failed:
            print(f"denoised {len(inputs) - len(failed)} of {len(inputs)} images")
    return 1 if failed else 0


def _input_images(paths: list[str]) -> list[Path]:
    """The image files that command-line inputs name: each file itself, each folder's images (:func:`_folder_images`);
    an empty or missing path is refused."""
    _refuse_empty_paths(paths)
    images = []
    for path in map(Path, paths):
        if path.is_dir():
            images += _folder_images(path)
        elif path.is_file():
            images.append(path)
        else:
            raise CommandError(f"image file or folder not found: {path}")
    return images


def _refuse_empty_paths(paths: list[str]) -> None:
    """An empty path would read as the current folder (an unset shell variable, "$IMAGE", gives one)."""
    if any(not str(path).strip() for path in paths):
        raise CommandError("an input path is empty (an unset shell variable?); name an image file or a folder")


def _check_channels(inputs: list[Path], denoiser_for, name: str) -> None:
    """Before any work: every input's header readable, and of channels the named denoiser takes, so that a mismatch
    does not stop a run halfway with part of the outputs written (a file whose pixels fail to read after a good
    header, a truncated one, is skipped and reported)."""
    from ._modules import accepted_channels
    from .io import file_channels

    for path in inputs:
        try:
            channels = file_channels(path)
        except ValueError as err:
            raise CommandError(str(err)) from None
        accepted = accepted_channels(denoiser_for(channels))
        if accepted is not None and channels not in accepted:
            raise CommandError(f"{path} has {channels} channel(s), but the denoiser {name} takes {accepted[0]}: "
                               "denoise gray and colour images in separate runs, or use --denoiser auto")


def cmd_certify(args) -> int:
    from ._finite import check_finite_model
    from .classification.storage import list_classifiers, read_classifier_metadata
    from .denoisers.certificates import certificate_of
    from .denoisers.certify import check_certificate
    from .denoisers.zoo import load_denoiser

    if args.model in {row["name"] for row in list_classifiers()} or _reads_as(read_classifier_metadata, args.model):
        raise CommandError(f"{args.model} is a classifier, not a denoiser: its certificate is each image's certified "
                           f"ℓ2 radius, which 'pnp-stable classify IMAGE --model {args.model}' prints")
    model = load_denoiser(args.model, verify=args.verify)  # a shipped name or a file, with or without --verify
    check_finite_model(model, args.model)  # NaN weights output NaN whatever the certificate says
    every_sigma, at_sigma = certificate_of(model), certificate_of(model, args.sigma)
    print(f"{args.model}: {every_sigma}")
    if at_sigma != every_sigma:  # a noise-adaptive model is more averaged at small σ
        print(f"at σ = {args.sigma:g}: {at_sigma}")
    check = check_certificate(model, (model.channels, args.size, args.size), args.sigma, restarts=args.restarts,
                              steps=args.steps, pairs=args.pairs, seed=args.seed)
    certificate, ratio = check.certificate, check.lipschitz.ratio
    if certificate.lipschitz is None:
        verdict = "above 1: D is expansive on this pair" if ratio > 1 + 1e-4 else "no certificate to check it against"
        print(f"empirical max ‖Dx − Dy‖/‖x − y‖ = {ratio:.4f}, a lower bound on its Lipschitz constant: {verdict} (no "
              "certificate, so PnP with it has no convergence guarantee)")
        return 0
    print(f"empirical max ‖Dx − Dy‖/‖x − y‖ = {ratio:.4f} (certified ≤ {certificate.lipschitz}"
          f"{_allowance_text(check.lipschitz_allowance)})")
    if check.averaged is None:
        print("no averagedness certificate: the Lipschitz bound is the only claim to check")
    else:
        print(f"empirical max ‖Nx − Ny‖/‖x − y‖ = {check.averaged.ratio:.4f} with N = (D − (1 − α)I)/α (certified ≤ 1"
              f"{_allowance_text(check.averaged_allowance)})")
        print(f"inequality (A) on {args.pairs} image pairs: worst relative defect {float(check.defects.max()):.3g} "
              f"(≤ 0 holds{_allowance_text(float(check.defect_allowance.max()), 'the closest pair')})")
    checks = "empirical checks" if check.averaged is not None else "empirical check"
    if check.withdrawn:
        print(f"{checks}: CERTIFICATE WITHDRAWN during them, now {check.after}; the numbers above describe a map "
              "computed less accurately than its certificate needs")
    elif check.holds:
        print(f"{checks}: within the certificate")
    else:
        print(f"{checks}: CERTIFICATE VIOLATED" + ("" if check.averaged is not None else
                                                   " (the search exceeds the Lipschitz bound)"))
    return 0 if check.holds else 1


def _allowance_text(allowance: float, where: str = "this pair's distance") -> str:
    return f", + {allowance:.3g} allowed for the inner solve's tolerance at {where}" if allowance > 1e-6 else ""


def _reads_as(reader, path: str) -> bool:
    """Whether ``path`` is a readable file of the kind ``reader`` validates (a metadata reader of its format)."""
    try:
        reader(path)
    except ValueError:
        return False
    return True


def _decoded(value):
    """A metadata string that holds a JSON object, array or number, decoded; any other value as it is."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        finite = isinstance(decoded, (int, float)) and math.isfinite(decoded)  # "NaN" stays a string: JSON has none
        return decoded if isinstance(decoded, (dict, list)) or finite else value
    return value


def cmd_models(args) -> int:
    from .classification.storage import list_classifiers
    from .denoisers.zoo import list_denoisers, noise_range_text
    from .theory import Certificate

    rows, classifiers = list_denoisers(), list_classifiers()
    if args.json:  # the weights files' metadata are strings; the JSON ones among them are given as JSON
        entries = rows + [{"kind": "classifier", **row} for row in classifiers]
        print(json.dumps([{key: _decoded(value) for key, value in entry.items()} for entry in entries], indent=2,
                         ensure_ascii=False))
        return 0
    column = max((len(row["name"]) for row in rows + classifiers), default=0)  # names aligned, however long
    for row in rows:
        certificate = Certificate.from_json(row["certificate"])
        training = json.loads(row.get("training", "{}"))
        summary = "no guarantee" if certificate.alpha is None and certificate.lipschitz is None else (
            f"Lipschitz ≤ {format_bound(certificate.lipschitz)}"
            + (f", α = {format_bound(certificate.alpha, 4)}-averaged" if certificate.alpha else ""))
        sigma = training.get("sigma")
        if isinstance(sigma, list) and len(sigma) == 2:
            sigma = noise_range_text(*sigma)
        data = ", ".join(str(entry).split("shared/data/")[-1] for entry in training.get("data", ["?"]))
        run_steps = row.get("steps", "?")
        total_steps = row.get("total_steps", run_steps)
        steps = f"{total_steps} steps" + (f" (the last {run_steps} fine-tuning)" if total_steps != run_steps else "")
        print(f"{row['name']:<{column}} {json.loads(row['config']).get('channels', '?')} ch  {summary:<38} "
              f"data {data}; σ {sigma}; {steps}")
    for row in classifiers:
        certificate = json.loads(row["certificate"])
        accuracy = json.loads(row.get("test_accuracy", "{}"))
        certified = ", ".join(f"{float(eps):g}: {value:.1%}" for eps, value in accuracy.get("certified", {}).items())
        tested = f"test clean {accuracy['clean']:.1%}, certified at ε {certified}" if accuracy else "not tested"
        print(f"{row['name']:<{column}} classifier  Lipschitz ≤ {format_bound(certificate['lipschitz'], 4)}  "
              f"{json.loads(row.get('training', '{}')).get('dataset', '?')}; {row.get('steps', '?')} steps; {tested}")
    return 0


def cmd_classify(args) -> int:
    import torch.nn.functional as F

    from .classification import certified_radius, load_classifier
    from .classification.data import DATASETS
    from .classification.storage import classifier_file
    from .io import load_image

    path = classifier_file(args.model)
    model = load_classifier(path)
    config = model.config
    names = next((names for channels, size, names in DATASETS.values()
                  if (channels, size, len(names)) == (config["in_channels"], config["image_size"], config["classes"])), None)
    size = config["image_size"]
    for source in _input_images(args.inputs):
        image = load_image(source, gray=config["in_channels"] == 1)
        resized = tuple(image.shape[-2:]) != (size, size)
        if resized:
            if not args.resize:
                raise CommandError(f"{source} is {image.shape[-1]}×{image.shape[-2]} pixels; the model takes {size}×{size}: "
                                   "resize it, or pass --resize to resize it here (antialiased bilinear)")
            image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            image = image.clamp(0, 1)  # non-negative weights summing to 1: the clamp removes only float rounding
        prediction, radius = certified_radius(model, image)
        label = int(prediction[0])
        name = f"'{names[label]}' ({label})" if names else str(label)
        which = f"the {size}×{size} resized image" if resized else "the image"
        print(f"{source}: class {name}, certified ℓ2 radius {format_bound(float(radius[0]), 4, up=False)} "
              f"(no perturbation of {which} of smaller norm, pixels in [0, 1], changes the class)")
    print(f"classifier {path.name}: Lipschitz ≤ {format_bound(model.lipschitz_bound())} (guaranteed per-layer bounds)")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), iterations=args.iters, progress=_progress_mode(args))
    return 0


# --- parser -------------------------------------------------------------------------------------
def _add_tiling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=tile_size, default="auto", metavar="SIZE",
                   help="run the denoiser on SIZE-pixel tiles whose windows keep its certificate (peak memory: one "
                        "tile); 0: the whole image; auto: tile only when the whole image would need more than 2 GiB "
                        "by the code's estimate")
    p.add_argument("--overlap", type=nonnegative_int, default=None, metavar="N",
                   help="pixels over which neighbouring tiles blend, at most (SIZE − 2)/3; default 33 (the receptive "
                        "field of averaged-gray/-color; the SLL networks reach further), or that maximum for smaller tiles")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="share the denoiser's tiles among N processes (relaunched by torch's elastic launcher, each "
                        "with cores/N threads): the same result and certificate; only tiled images are shared, so "
                        "give --tile for images below the automatic size")


def _add_ensemble(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ensemble", type=int, choices=[1, 2, 4, 8], default=1, metavar="{1,2,4,8}",
                   help="average the network denoiser over this many flips and rotations of the image: the same "
                        "certificate, this many times the denoiser's cost (architectures.md: +0.00–0.05 dB at 8)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true",
                   help="no progress output: no bar on a terminal, no plain progress line every 10 s otherwise")


def build_parser() -> argparse.ArgumentParser:
    from .operators.kernels import KERNEL_SPECS
    from .solvers.schemes import SCHEMES

    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = OneLineParser(prog="pnp-stable", formatter_class=fmt,
                     description="Plug-and-Play restoration with provably averaged denoisers.")
    parser.add_argument("--version", action="version", version=f"pnp-stable {__version__}")
    commands = parser.add_subparsers(dest="command", title="sub-commands", parser_class=OneLineParser)

    p = commands.add_parser("deblur", formatter_class=fmt, help="deblur an image with monitored PnP",
                            description="Deblur IN (blurred with a known kernel and Gaussian noise) by a certified PnP "
                                        "iteration, or with --simulate blur a clean IN first. Prints the certified β, the "
                                        "monitor's verdict and, with a reference, the PSNR.")
    p.add_argument("input", metavar="IN", help="image file (PNG, JPEG, TIFF or .npy [H, W(, C)] in [0, 1]), or a folder "
                                               "of them (with a progress bar over files; --out is then a folder)")
    p.add_argument("--kernel", required=True, metavar="SPEC", help=f"blur kernel: {KERNEL_SPECS} (required)")
    p.add_argument("--noise", required=True, type=positive_level, metavar="SIGMA",
                   help="noise standard deviation on the [0, 1] scale, e.g. 0.01 or 7.65/255 (required)")
    p.add_argument("--solver", type=solver_name, choices=sorted(SCHEMES), default=None,
                   help="PnP scheme (fista carries no guarantee; deepinv's names, PGD for fb, too); default fb, or drs "
                        "with --denoiser guided")
    p.add_argument("--denoiser", default="auto", metavar="NAME|PATH|guided",
                   help="shipped model (see `pnp-stable models`) or a .safetensors file; auto picks the network "
                        "best at the denoiser's level σ_d for the image's channels; guided: a linear filter W(g) built from a frozen guide g (see --guide)")
    p.add_argument("--guide", default=None, metavar="bm3d|bm3d-lc|NAME|PATH",
                   help="with --denoiser guided: the denoiser whose short DPIR-schedule pilot gives the guide g "
                        "(bm3d, the default, or its low-complexity profile bm3d-lc, 2.5× faster and 0.2 dB lower in guided_speed.md; both need the bm3d extra; "
                        "or a shipped model, e.g. dncnn-color)")
    p.add_argument("--guided-rounds", type=positive_int, default=None, metavar="N",
                   help="with --denoiser guided: certified rounds, each guided by the previous estimate "
                        "(None: the guide's default, pnp_stable.solvers.guided_defaults: 1 for BM3D, 2 for a network)")
    p.add_argument("--denoiser-sigma", type=level, default=None, metavar="S",
                   help="denoiser strength σ_d; None uses the tuned strength × SIGMA")
    p.add_argument("--step", type=float, default=None, help="step τ; None uses the tuned step (FB refuses τ ≥ 2/L)")
    p.add_argument("--denoiser-weight", type=float, default=None, metavar="W",
                   help="weight ω of the denoising step x + ω(D(x) − x), in (0, 1/α_D); None uses the tuned weight")
    p.add_argument("--relaxation", type=positive_float, default=1.0, metavar="L",
                   help="Krasnosel'skii-Mann relaxation z + λ(Tz − z), λβ-averaged for λ < 1/β (refused outside that "
                        "unless --allow-unsafe-step)")
    p.add_argument("--iters", type=positive_int, default=None, metavar="N",
                   help="maximum iterations (with acceleration: denoiser calls, a rejected extrapolation costing one); "
                        "None uses the tuned budget")
    p.add_argument("--tol", type=nonnegative_float, default=1e-5, metavar="T",
                   help="stop when (r + e)/‖z_{k+1}‖ < T, r = ‖z_{k+1} − z_k‖ and e the bound on the evaluation's error "
                        "('accuracy-limited' where r is within that error)")
    p.add_argument("--allow-unsafe-step", action="store_true",
                   help="run a step or weight outside the theory's range (e.g. FB's τ ≥ 2/L) instead of refusing it; "
                        "a run outside that range has no certified β")
    p.add_argument("--accelerate", action=argparse.BooleanOptionalAction, default=None,
                   help="safeguarded Anderson acceleration: fewer denoiser calls, the same limit and guarantee "
                        "(the monitor checks the safeguard); not for fista. Default: on with a certified denoiser, except for fista")
    p.add_argument("--boundary", choices=["valid", "circular", "reflect", "replicate", "zeros"], default=None,
                   type=lambda name: "zeros" if name == "constant" else name,  # ps.blur's BOUNDARY_ALIASES
                   help="how the blur treats the image's edges. valid (the default for a photo): the blur mixed in "
                        "scene pixels beyond the frame, nothing is assumed about them (best on real photos, "
                        "benchmarks/results/boundary.md); circular (the default with --simulate): the image wraps "
                        "around; reflect, replicate, zeros (deepinv's 'constant'): that padding")
    p.add_argument("--out", default=None, metavar="OUT.png",
                   help="restored image; None writes IN_deblurred.png next to IN (.tif, .npy for such inputs, which "
                        "keep their precision); a name without a suffix is a folder that gets IN_deblurred.png (for a "
                        "folder IN: a folder, default IN_deblurred/, holding NAME_deblurred.png per image)")
    p.add_argument("--plot", default=None, metavar="PLOT.png", help="write the residual-vs-bound plot here")
    p.add_argument("--simulate", action="store_true", help="IN is clean: blur it and add noise first (also writes OUT_degraded.png)")
    p.add_argument("--seed", type=seed, default=0, help="noise seed for --simulate")
    p.add_argument("--reference", default=None, metavar="CLEAN.png", help="clean image: report PSNR per iteration")
    _add_ensemble(p)
    _add_tiling(p)
    _add_common(p)
    p.set_defaults(run=cmd_deblur)

    p = commands.add_parser("denoise", formatter_class=fmt, help="remove Gaussian noise with a certified denoiser",
                            description="Denoise one or more images with a (certified) denoiser.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="image file(s) or folder(s) of images")
    p.add_argument("--sigma", required=True, type=level, metavar="S", help="noise level on the [0, 1] scale, e.g. 25/255 (required)")
    p.add_argument("--out", required=True, metavar="OUT", help="output file, or a directory for several inputs (required)")
    p.add_argument("--denoiser", default="auto", metavar="NAME|PATH", help="shipped model or .safetensors file; auto picks by channels and --sigma")
    p.add_argument("--reference", default=None, metavar="CLEAN.png", help="clean version of the (one) input: report PSNR")
    p.add_argument("--simulate", action="store_true",
                   help="each IN is clean: add Gaussian noise of --sigma first (also writes OUT_degraded) and report PSNR")
    p.add_argument("--seed", type=seed, default=0, help="noise seed for --simulate")
    _add_ensemble(p)
    _add_tiling(p)
    _add_common(p)
    p.set_defaults(run=cmd_denoise)

    p = commands.add_parser("certify", formatter_class=fmt, help="print a model's certificate and test it empirically",
                            description="Print the certificate of a model (for a noise-adaptive model also the tighter "
                                        "one at --sigma) and search adversarially for a violation of the certificate at "
                                        "--sigma (exit 1 when one is found).")
    p.add_argument("model", metavar="NAME|PATH", help="shipped model name or .safetensors file")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute every stored norm bound (certify averaged-gray --verify: 16 s with its search, fuzz.md); "
                        "default: on for files "
                        "outside the package, whose digest could have been recomputed after an edit")
    p.add_argument("--size", type=positive_int, default=32, help="side of the test images")
    p.add_argument("--sigma", type=level, default="25/255", help="noise level given to the denoiser; its certificate there is tested")
    p.add_argument("--restarts", type=positive_int, default=4, help="adversarial search restarts")
    p.add_argument("--steps", type=positive_int, default=60, help="Adam steps per restart")
    p.add_argument("--pairs", type=positive_int, default=64, help="image pairs for inequality (A)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the search")
    p.set_defaults(run=cmd_certify)

    p = commands.add_parser("models", formatter_class=fmt, help="list the shipped denoisers and classifiers",
                            description="The model zoo with each model's certificate and training data.")
    p.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    p.set_defaults(run=cmd_models)

    p = commands.add_parser("demo", formatter_class=fmt, help="deblur camera and astronaut, write demo_out/",
                            description="Blur scikit-image's camera and astronaut with a motion kernel and noise 0.01, "
                                        "restore them with PnP-FB and the shipped certified denoisers, print PSNR, β and "
                                        "the verdict, and write a PNG grid and the residual-vs-bound plot.")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--iters", type=positive_int, default=None, help="maximum iterations; None uses the tuned budget")
    p.add_argument("--quiet", action="store_true", help="no progress bar, nor progress lines off a terminal")
    p.set_defaults(run=cmd_demo)

    p = commands.add_parser("classify", formatter_class=fmt, help="classify images with a certified ℓ2 radius",
                            description="Print each image's class and its certified ℓ2 radius: margin over the guaranteed "
                                        "Lipschitz bound of each logit difference.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders of images (Fashion-MNIST models: 28×28 gray, "
                                                                "white object on black)")
    p.add_argument("--model", default="fashion-mnist-lipschitz", help="shipped classifier or a .safetensors file")
    p.add_argument("--resize", action="store_true", help="resize images of another size to the model's; without it they are refused")
    p.set_defaults(run=cmd_classify)

    commands.add_parser("train", help="train a certified denoiser (options: pnp-stable train --help)", add_help=False)
    commands.add_parser("train-classifier", help="train a certified classifier (options: pnp-stable train-classifier --help)",
                        add_help=False)
    return parser


_ALLOCATION_FAILED = re.compile(r"can't allocate memory|not enough memory|out of memory|failed to allocate", re.I)


def _out_of_memory(err: BaseException) -> bool:
    """True for a MemoryError, torch's OutOfMemoryError (a GPU's) or a RuntimeError from an allocator that found
    no memory (the CPU's: 'DefaultCPUAllocator: can't allocate memory')."""
    if isinstance(err, MemoryError):
        return True
    import torch

    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and _ALLOCATION_FAILED.search(str(err)) is not None)


def _image_size(path) -> tuple[int, int, int] | None:
    """(width, height, channels) of an image file from its header (no pixels are read), or of a ``.npy`` [H, W(, C)]
    array (memory-mapped), the channels as :func:`~pnp_stable.io.load_image` gives them (an RGBA file is 3); None
    when the file cannot tell."""
    import numpy as np
    from PIL import Image

    from .io import file_channels

    try:
        if str(path).lower().endswith(".npy"):
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            return (shape[1], shape[0], shape[2] if len(shape) == 3 else 1) if len(shape) in (2, 3) else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # a huge image is why we are here
            with Image.open(path) as image:
                width, height = image.width, image.height
            return width, height, file_channels(path)  # inside: the warning filter covers its header read too
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _memory_advice(args) -> str:
    """Which command ran out of memory, on what input (the largest image, its size read from the file header),
    and what to do."""
    inputs = getattr(args, "inputs", None) or ([args.input] if getattr(args, "input", None) else [])
    sized = [(path, _image_size(path)) for path in inputs]
    device = getattr(args, "device", "cpu")
    if not sized:
        hint = "use a smaller --size or fewer --pairs" if args.command == "certify" else "free some memory"
        return f"{args.command} ran out of memory (device {device}); {hint}"
    path, size = max(sized, key=lambda item: item[1][0] * item[1][1] if item[1] else 0)
    described = f"{path} ({size[0]}×{size[1]} pixels, {size[2]} channel(s))" if size else str(path)
    if len(sized) > 1:
        described = f"{len(sized)} images" + (f", the largest {described}" if size else "")
    also = "; or use the CPU's memory: --device cpu" if str(device).startswith("cuda") else ""
    tile = getattr(args, "tile", None)
    if tile is None:
        tiles = ""
    elif isinstance(tile, int) and tile > 0:
        tiles = f"; or smaller denoiser tiles: --tile {max(2, tile // 2)}"
    else:
        tiles = "; or run the denoiser in tiles: --tile 512 (smaller tiles need less memory)"
    return (f"{args.command} ran out of memory on {described} (device {device}); use a smaller image or crop it"
            f"{tiles}{also}")


def _one_line_warning(command: str):
    """A ``warnings.showwarning`` that prints a warning as the errors are printed, 'pnp-stable COMMAND: warning:
    MESSAGE' on one line (in a --workers launch from the leading process only), instead of Python's file:line form."""

    def show(message, category, filename, lineno, file=None, line=None):
        if os.environ.get("RANK", "0") == "0":
            print(f"pnp-stable {command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    return show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        from .training.__main__ import main as train_main

        return train_main(rest, prog="pnp-stable train")
    if args.command == "train-classifier":
        from .classification.__main__ import main as train_classifier_main

        return train_classifier_main(rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    launched = _launch_workers(args, sys.argv[1:] if argv is None else argv)
    if launched is not None:
        return launched
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command)
            return args.run(args)
    except (ValueError, ImportError, OSError) as err:
        message = " ".join(str(err).split())
        if os.environ.get("RANK", "0") == "0":  # in a --workers launch, the leading process speaks for all
            print(f"pnp-stable {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except (MemoryError, RuntimeError) as err:
        if not _out_of_memory(err):
            raise
        print(f"pnp-stable {args.command}: error: {_memory_advice(args)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"pnp-stable {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
