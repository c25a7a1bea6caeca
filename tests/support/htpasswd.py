"""bcrypt htpasswd files for pullcache's `auth.htpasswd` (the format `htpasswd -B` writes)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import bcrypt


def write_htpasswd(path: Path, users: Mapping[str, str], *, rounds: int = 4) -> Path:
    """Write `user:bcrypt(password)` lines; few rounds because tests check logic, not cost."""
    lines = [
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()}"
        for user, password in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
