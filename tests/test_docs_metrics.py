"""The README's metrics paragraph names every metric pullcache exposes, so operators can find each one."""
from __future__ import annotations

from pathlib import Path

from pullcache import metrics

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_names_every_metric() -> None:
    readme = README.read_text()
    names = {metric.name + ("_total" if metric.type == "counter" else "")
             for metric in metrics.REGISTRY.collect()}
    assert names and sorted(name for name in names if f"`{name}`" not in readme) == []
