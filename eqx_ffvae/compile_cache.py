"""JAX's persistent compilation cache, on for `train`, `eval` and `compare`, with atomic writes.

A training step compiles in 10–25 s on a 2-core CPU and 85–118 s on an H200; with the cache, a
repeated or resumed run loads it instead (`python train/run.py --no-compile-cache` turns it off).
The whole step is cached: it holds no host callback (`flows.integrate` runs its solves with
`throw=False`), and JAX does not cache programs with one. Tracing the step (Python) is not cached.

JAX writes an entry in place (`Path.write_bytes`). A process killed mid-write, or one that reads an
entry while another writes it, then finds half an executable, and deserialising one has crashed
processes here. `enable` therefore makes JAX's file cache write each entry to a temporary file in
the same folder and rename it into place: an entry is complete or absent. That reaches into JAX's
private `jax._src.compilation_cache` (there is no public hook); if its layout changes, `enable`
raises and says so rather than caching unsafely.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV_VAR = "EQX_FFVAE_COMPILE_CACHE"
_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_hits = 0


def _count_hit(event: str, **_) -> None:
    global _hits
    if event == _HIT_EVENT:
        _hits += 1


jax.monitoring.register_event_listener(_count_hit)


def hits() -> int:
    """Programs this process has loaded from the persistent cache so far (compare two readings)."""
    return _hits


def default_directory() -> Path:
    """$EQX_FFVAE_COMPILE_CACHE, else $XDG_CACHE_HOME/eqx_ffvae/jax, else ~/.cache/eqx_ffvae/jax."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "eqx_ffvae" / "jax"


try:  # JAX's private cache module: there is no public hook for how entries are written
    from jax._src import compilation_cache as _jax_cache
    from jax._src import lru_cache as _jax_lru

    _jax_cache.get_file_cache  # noqa: B018 (the hook `enable` replaces)
    _jax_lru._CACHE_SUFFIX  # noqa: B018
except (ImportError, AttributeError) as _err:  # pragma: no cover (another JAX)
    _jax_cache = _jax_lru = None
    _MISSING = str(_err)
else:
    _MISSING = ""

    class AtomicFileCache(_jax_lru.LRUCache):
        """JAX's file cache, each entry written to a temporary file and renamed into place."""

        def put(self, key: str, value: bytes) -> None:
            if self.eviction_enabled or not key:
                return super().put(key, value)
            path = Path(self.path) / f"{key}{_jax_lru._CACHE_SUFFIX}"
            if path.exists():
                return None
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            partial.write_bytes(value)
            os.replace(partial, path)
            return None


def _get_file_cache(path: str):
    return AtomicFileCache(path, max_size=jax.config.jax_compilation_cache_max_size), path


def enable(directory: str | os.PathLike) -> Path:
    """Turn on JAX's persistent compilation cache in `directory` (created if needed) for this process,
    with atomic writes, caching every program that takes over 1 s to compile. A directory the user
    already gave JAX (JAX_COMPILATION_CACHE_DIR / jax_compilation_cache_dir) is kept. Returns the
    directory in use."""
    if _jax_cache is None:
        raise RuntimeError(
            f"this JAX ({jax.__version__}) has changed the compilation cache's internals ({_MISSING}); "
            "run with --no-compile-cache, or pin the JAX version in pyproject.toml"
        )
    _jax_cache.get_file_cache = _get_file_cache
    current = jax.config.jax_compilation_cache_dir
    if not current:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(directory))
        current = str(directory)
    return Path(current)
