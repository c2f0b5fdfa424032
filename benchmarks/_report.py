"""Shared header of every results file: machine, versions, date, command, commit."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import deepinv
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout.split("\n")
        changed = [line[3:] for line in changed if line.strip()]
        return out.stdout.strip() + (f" with uncommitted changes to {', '.join(changed)}" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"


#: when the script started, from which commit, under which load: taken when the script imports this module, before
#: any measured work, so that a header written after the work still names the code that ran and the state it ran in
STARTED_AT = datetime.now(timezone.utc)
STARTED_COMMIT = git_commit()
STARTED_LOAD = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran this script (or ``argv``), as typed from the project root."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join([".venv/bin/python", str(script), *argv[1:]])


def output_path(prefix: str | Path, suffix: str) -> Path:
    """The file ``prefix`` + ``suffix`` (".md", ".png") of a script whose --out is a prefix. Unlike
    ``Path.with_suffix`` it keeps a dot inside the prefix (``deblur-gray-7.65`` → ``deblur-gray-7.65.md``, not
    ``deblur-gray-7.md``); a prefix that already ends in ".md" or ".png" loses that ending first."""
    prefix = Path(prefix)
    if prefix.suffix in (".md", ".png"):
        prefix = prefix.with_suffix("")
    return prefix.with_name(prefix.name + suffix)


def header(title: str, command: str | None = None) -> list[str]:
    """The results file's provenance lines; ``command`` overrides the command line where the report does not depend
    on the options that selected the work (a report rebuilt from every state file)."""
    return [
        f"# {title}",
        "",
        f"- command: `{command or command_line()}`",
        f"- date: {STARTED_AT:%Y-%m-%d %H:%M} UTC",
        f"- commit: {STARTED_COMMIT}",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"load average (1 min) {STARTED_LOAD:.2f} at start",
        f"- versions: torch {torch.__version__}, deepinv {deepinv.__version__}, Python {platform.python_version()}",
        "",
    ]
