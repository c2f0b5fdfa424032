"""The training loop both trainers share (certified denoisers, certified classifiers): steps until ``config.steps``
or a stop request (SIGINT/SIGTERM while it runs), a checkpoint every ``config.checkpoint_minutes`` and at a stop, a
stop on a non-finite loss, weights or optimiser moment that keeps the last finite checkpoint, progress as a bar or as
JSON lines, and the training wall time kept across resumes."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._finite import first_nonfinite

__all__ = ["TrainingDiverged", "TrainingLoop"]


class TrainingDiverged(ValueError):
    """The loss or the weights became NaN/Inf; nothing was saved after the last finite step."""


class TrainingLoop:
    """:meth:`run` around a subclass's ``train_step()`` (one optimisation step, returning the loss) and
    ``save_checkpoint()`` (which sets ``saved_step``). The subclass sets ``config`` (``steps``, ``lr``, ``out``,
    ``checkpoint``, ``checkpoint_minutes``, ``log_every``), ``model``, ``optimizer``, ``step``, ``saved_step``,
    ``progress``, ``log`` and ``train_seconds``, and may override :meth:`_agree` (several processes),
    :meth:`_extend_record` (validation) and :meth:`_calibrate`."""

    rank = 0  # the process that prints; every process runs the loop
    _stop_requested = False
    stop_signal: int | None = None  # the signal that stopped the run, for the exit status

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.config.checkpoint or str(self.config.out) + ".ckpt")  # not *.safetensors: never mistaken for weights

    def request_stop(self, signum=None, frame=None) -> None:
        """Make :meth:`run` write a checkpoint and return 'interrupted' after the current step (also the handler
        of SIGINT/SIGTERM while it runs); a request made before :meth:`run` stops it after its first step."""
        self._stop_requested = True
        self.stop_signal = self.stop_signal or signum

    def _agree(self, *flags: bool) -> list[bool]:
        """Each flag as every process sees it (one process: as it is)."""
        return list(flags)

    def _extend_record(self, record: dict, bar) -> None:
        """Add what this trainer measures besides the loss to a step's ``record`` (nothing here)."""

    def _calibrate(self) -> None:
        """Refresh the model's power-estimate → guaranteed-bound ratios (a model without norm bounds has none)."""
        calibrate = getattr(self.model, "calibrate", None)
        if calibrate is not None:
            calibrate()

    def _divergence(self, loss: torch.Tensor) -> str | None:
        """What is non-finite after a step (the loss, else the first parameter or buffer, else an optimiser moment),
        or None."""
        if not bool(torch.isfinite(loss.detach()).all()):
            return f"the loss is {float(loss.detach()):g}"
        found = first_nonfinite(self.model.state_dict())
        if found is None:  # finite weights with an overflowed moment (Adam's exp_avg_sq) would turn NaN next step
            names = {id(parameter): name for name, parameter in self.model.named_parameters()}
            moments = {f"optimizer {key} of {names.get(id(parameter), 'a parameter')}": value
                       for parameter, state in self.optimizer.state.items()
                       for key, value in state.items() if isinstance(value, torch.Tensor)}
            found = first_nonfinite(moments)
        return None if found is None else f"'{found[0]}' has {found[1]} NaN/Inf values"

    def _diverged(self, problem: str | None) -> TrainingDiverged:
        where = (f"the last finite checkpoint {self.checkpoint_path} (step {self.saved_step}) is kept"
                 if self.saved_step is not None else "no checkpoint was written")
        return TrainingDiverged(f"training diverged at step {self.step}: {problem or 'on another process'}; "
                                f"{where}; start again with a lower --lr (now {self.config.lr:g})")

    def run(self) -> str:
        """Train until ``steps`` or a stop signal; returns 'finished' or 'interrupted' (a checkpoint is written
        either way). Raises :class:`TrainingDiverged` when the loss, the weights or an optimiser moment becomes
        NaN/Inf after a step: checked before any save, so the checkpoint on disk stays the last finite one."""
        config = self.config
        previous = {s: signal.signal(s, self.request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        started, base = time.monotonic(), self.train_seconds
        last_save = started
        self.model.train()
        try:
            with tqdm(total=config.steps, initial=self.step, disable=not self.progress, desc="training") as bar:
                while self.step < config.steps:
                    loss = self.train_step()
                    self.train_seconds = base + time.monotonic() - started
                    problem = self._divergence(loss)
                    diverged, stop, save_due = self._agree(problem is not None, self._stop_requested,
                                                           time.monotonic() - last_save > 60 * config.checkpoint_minutes)
                    if diverged:
                        raise self._diverged(problem)
                    record = {"step": self.step, "loss": float(loss.detach())}
                    self._extend_record(record, bar)
                    self.log.append(record)
                    bar.update(1)
                    if not self.progress and self.rank == 0 and config.log_every and self.step % config.log_every == 0:
                        print(json.dumps({**record, "elapsed_s": round(self.train_seconds, 1)}), file=sys.stderr, flush=True)
                    if (stop and self.step < config.steps) or save_due:
                        self.save_checkpoint()
                        last_save = time.monotonic()
                        if stop and self.step < config.steps:
                            return "interrupted"
            self._calibrate()  # still under the stop handler: a signal now only sets the flag, the save follows
            self.train_seconds = base + time.monotonic() - started
            self.save_checkpoint()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return "finished"
