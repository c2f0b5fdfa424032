"""What a denoiser states about itself: its certificate (pnp-stable's own, or a caller's, which is trusted as given)
and the description a wrapper passes on from the model it wraps."""

from __future__ import annotations

from ..theory import Certificate

__all__ = ["DESCRIPTION", "certificate_of", "keep_description"]


#: What a wrapper that denoises with a model reports as its own (as ``functools.update_wrapper`` keeps a function's
#: name): the channels it takes (the solvers check them), the noise levels it was last trained on
#: (:func:`~pnp_stable.denoisers.zoo.outside_training`) and the name it was loaded by (results and messages)
DESCRIPTION = ("channels", "noise_range", "name")


def keep_description(wrapper, denoiser) -> None:
    """Give ``wrapper`` the :data:`DESCRIPTION` attributes of the ``denoiser`` it wraps (None where it has none)."""
    for attribute in DESCRIPTION:
        setattr(wrapper, attribute, getattr(denoiser, attribute, None))


def certificate_of(denoiser, sigma=None) -> Certificate:
    """The denoiser's ``certificate`` attribute, or 'no certificate' for any other callable. With ``sigma``
    (a float or a [B] tensor) and a denoiser that has ``certificate_at``, the certificate of D(·, σ) at those
    noise levels, which can be tighter than the one that holds for every σ. A certificate of an object that is
    not pnp-stable's own is the caller's assertion: it comes back marked as trusted (``Certificate.trusted``)."""
    if sigma is not None and hasattr(denoiser, "certificate_at"):
        certificate = denoiser.certificate_at(sigma)
    else:
        certificate = getattr(denoiser, "certificate", None)
    if certificate is None:
        return Certificate.none(f"{type(denoiser).__name__} carries no certificate")
    if not isinstance(certificate, Certificate):  # the caller meant one: say how to state it
        return Certificate.none(f"{type(denoiser).__name__}.certificate is {type(certificate).__name__} "
                                f"{certificate!r}, not a pnp_stable Certificate, so none is taken; state one as "
                                "ps.Certificate(lipschitz=1.0, alpha=0.5, method='why it holds')")
    owner = type(denoiser)
    if (certificate.lipschitz is not None or certificate.alpha is not None) and not owner.__module__.startswith("pnp_stable."):
        return certificate.trusting(f"{owner.__name__} certificate")
    return certificate
