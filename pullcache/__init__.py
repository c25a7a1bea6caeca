"""pullcache: a pull-through caching proxy for OCI/Docker registries that also accepts pushes."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pullcache")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
    __version__ = "0+unknown"
