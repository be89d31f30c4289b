"""bertclf: distributed BERT text classification on Ray."""

from importlib.metadata import PackageNotFoundError, version

try:  # one version, pyproject.toml's, as installed: `bertclf --version`, checkpoints, the endpoint's OpenAPI
    __version__ = version("bertclf")
except PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
    __version__ = "0+unknown"
