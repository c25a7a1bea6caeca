"""PLACEHOLDER (owner: observability): text or JSON logging."""
import logging

from pullcache.config import LogConfig


def configure_logging(config: LogConfig) -> None:
    logging.basicConfig(level=config.level.upper())
