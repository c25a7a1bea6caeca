"""Who may pull, push and delete which repository: `auth.access` rules over `auth.groups`, without HTTP.

- Rules are tried in order; the first whose `repos` globs match the repository decides, and an action
  it does not grant is refused. A repository no rule matches is refused every action.
- A rule grants an action to users, groups, `authenticated` (every known user) and `anonymous`
  (everyone, logged in or not: a user may always do what an anonymous client may).
- The repository is matched by its canonical name: a local repository by its name, a proxied one by
  its upstream-qualified name (`alpine` pulled through the default Docker Hub upstream is
  `docker.io/library/alpine`, whether it was asked as `alpine`, `library/alpine?ns=docker.io` or
  `docker.io/library/alpine`). api/auth.py works the name out; this module only decides.

Every name a rule or group uses must exist when the policy is built (a user of auth.htpasswd, a robot
token, a group), so a typo stops start-up instead of silently granting nothing.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from pullcache.config import ACCESS_ACTIONS, SPECIAL_PRINCIPALS, AccessRule, ConfigError
from pullcache.names import matches_glob

ANONYMOUS = "anonymous"
AUTHENTICATED = "authenticated"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # names the rule: what a 403 says and the audit log records


class Policy:
    """The rules, their principals expanded to user names once at start-up."""

    def __init__(self, rules: Sequence[AccessRule], groups: Mapping[str, Sequence[str]],
                 users: Collection[str]) -> None:
        for group, members in groups.items():
            for member in members:
                if member not in users:
                    raise ConfigError(f"auth.groups.{group}: {member!r} is not a user of auth.htpasswd or a robot "
                                      "token (expected existing user names)")
        self._rules = tuple(rules)
        self._grants: list[dict[str, frozenset[str]]] = []
        for i, rule in enumerate(rules):
            grants = {}
            for action in ACCESS_ACTIONS:
                expanded: set[str] = set()
                for name in rule.principals(action):
                    if name in groups:
                        expanded.update(groups[name])
                    elif name in users or name in SPECIAL_PRINCIPALS:
                        expanded.add(name)
                    else:
                        raise ConfigError(f"auth.access[{i}].{action}: {name!r} is not a user of auth.htpasswd, a "
                                          f"robot token, a group of auth.groups, {ANONYMOUS} or {AUTHENTICATED}")
                grants[action] = frozenset(expanded)
            self._grants.append(grants)

    def _rule(self, repository: str) -> int | None:
        return next((i for i, rule in enumerate(self._rules)
                     if any(matches_glob(repository, glob) for glob in rule.repos)), None)

    def _describe(self, i: int) -> str:
        return f"auth.access[{i}] (repos {', '.join(self._rules[i].repos)})"

    def decide(self, user: str | None, repository: str, action: str) -> Decision:
        """Whether `user` (None: anonymous) may do `action` on the canonical `repository`."""
        i = self._rule(repository)
        if i is None:
            return Decision(False, f"no auth.access rule matches {repository!r}")
        granted = self._grants[i][action]
        who = user or ANONYMOUS
        if ANONYMOUS in granted or (user and (AUTHENTICATED in granted or user in granted)):
            return Decision(True, f"{self._describe(i)} grants {action} to {who}")
        return Decision(False, f"{self._describe(i)} does not grant {action} on {repository!r} to {who}")

    def actions(self, user: str | None, repository: str) -> set[str]:
        """Every action `user` may do on `repository` (what a token for it may carry)."""
        return {action for action in ACCESS_ACTIONS if self.decide(user, repository, action).allowed}
