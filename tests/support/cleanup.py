"""Removing daemon state dirs that may still hold mounts.

dockerd bind-mounts its data root onto itself and containerd mounts snapshots; after a
SIGKILL those mounts stay, and `rm -rf` on them would fail (EBUSY) or leak.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first (the order to unmount them)."""
    prefix = str(root.resolve())
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree(root: Path) -> None:
    """Unmount everything under `root` (lazily, so a busy mount cannot block), then delete it."""
    if not root.exists():
        return
    for point in mounts_under(root):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)
