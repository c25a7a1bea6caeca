"""pullcache: a pull-through caching proxy for OCI/Docker registries that also accepts pushes."""

__version__ = "0.1.0"
