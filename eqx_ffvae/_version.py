"""The installed package's version (the metadata of the distribution; "0.0.0+unknown" from a bare checkout)."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("eqx_ffvae")
except importlib.metadata.PackageNotFoundError:
    __version__ = "0.0.0+unknown"
