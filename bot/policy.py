"""Who may run what: roles from the config, per-command permission rules.

The same check runs for a command, a button click and a modal submit, always on the user id taken
from the signed payload. Rules are keyed by policy key (`plan.done`) or a pattern (`plan.*`); the most
specific rule wins and no rule means everyone may. Every refusal says why and how to get access.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from bot.config import EVERYONE, Config
from bot.ports import AdapterError, Directory


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def _specificity(pattern: str) -> tuple[int, int]:
    # Exact keys beat patterns; among patterns, the longer literal prefix wins.
    wild = any(c in pattern for c in "*?[")
    literal = len(pattern.split("*", 1)[0])
    return (0 if wild else 1, literal)


class Policy:
    """Roles and permission rules; see the module docstring."""

    def __init__(self, config: Config, directory: Directory) -> None:
        self.config = config
        self.directory = directory
        # Every command, click and submit asks; the rules are fixed for the life of the config.
        self._rules: dict[str, tuple[str, list[str]] | None] = {}

    async def roles_of(self, user: str) -> frozenset[str]:
        """Every role the user holds, directly or through a user group."""
        held: set[str] = set()
        for role, members in self.config.roles.items():
            for m in members:
                if m == user:
                    held.add(role)
                    break
                if m.startswith("@") or m.startswith("S"):
                    try:
                        if user in await self.directory.group_members(m):
                            held.add(role)
                            break
                    except AdapterError:
                        # Fail closed: a group we cannot read grants nothing.
                        continue
        return frozenset(held)

    def rule_for(self, key: str) -> tuple[str, list[str]] | None:
        """The most specific permission rule for a policy key."""
        if key in self._rules:
            return self._rules[key]
        rule = self._match_rule(key)
        if len(self._rules) < 4096:  # keys are command and action ids; bounded all the same
            self._rules[key] = rule
        return rule

    def _match_rule(self, key: str) -> tuple[str, list[str]] | None:
        matches = [p for p in self.config.permissions if p == key or fnmatch.fnmatchcase(key, p)]
        if not matches:
            return None
        best = max(matches, key=_specificity)
        return best, self.config.permissions[best]

    async def check(self, user: str, key: str) -> Decision:
        """May `user` do `key`? With the reason either way."""
        try:
            person = await self.directory.person(user)
        except AdapterError:
            person = None
        if person is not None and (person.is_bot or person.deleted):
            return Decision(False, f"<@{user}> is a bot or a deactivated account; only people can run `{key}`.")
        rule = self.rule_for(key)
        if rule is None:
            return Decision(True, f"`{key}` is open to everyone")
        pattern, allowed = rule
        if EVERYONE in allowed:
            if person is not None and person.is_guest:
                return Decision(False, f"guests can't run `{key}`; ask a full member of the workspace.")
            return Decision(True, f"`{key}` is open to everyone ({pattern})")
        held = await self.roles_of(user)
        granted = sorted(held & set(allowed))
        if granted:
            return Decision(True, f"role {granted[0]} may run `{key}`")
        need = " or ".join(f"`{r}`" for r in allowed)
        have = ", ".join(f"`{r}`" for r in sorted(held)) or "no role"
        return Decision(
            False,
            f"`{key}` needs the role {need} (rule `{pattern}`); you have {have}. "
            f"An admin can add you under `roles:` in the opsloop config.",
        )

    async def in_role(self, user: str, role: str) -> bool:
        """Whether the user holds `role`."""
        return role in await self.roles_of(user)
