"""What produced a run: the package version, the git commit of its source (if it is a checkout), the
stack's versions, the Python, the machine and the devices. Recorded in config.json by every start."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import jax

from ._version import __version__

STACK = (
    "jax",
    "jaxlib",
    "equinox",
    "diffrax",
    "optax",
    "jaxtyping",
    "grain",
    "orbax-checkpoint",
    "numpy",
    "tensorboardX",
)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu() -> str:
    """The CPU's model name and count, and on Linux a fingerprint of its instruction-set flags (XLA
    compiles for the host's features, so two VMs that both say "AMD EPYC" may still round apart)."""
    name, flags = platform.processor(), ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
            name = value.strip()
        if key.strip() == "flags" and not flags:
            flags = hashlib.sha256(" ".join(sorted(value.split())).encode()).hexdigest()[:12]
    return f"{name or 'unknown'} × {os.cpu_count()}" + (f", flags {flags}" if flags else "")


def provenance() -> dict:
    """A JSON-ready record of this process: `eqx_ffvae`, `git_commit` (None outside a checkout) and
    `git_dirty` (uncommitted changes to tracked files), `packages`, `python`, `platform`, `cpu`,
    `xla_flags` (the XLA_FLAGS environment variable: XLA's thread count changes float32 sums, so an
    exact reproduction on a CPU needs the same), `backend`, `devices` and `time` (UTC)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "eqx_ffvae": __version__,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "packages": {name: _version(name) for name in STACK},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
