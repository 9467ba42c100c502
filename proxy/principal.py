"""Who is acting: the composite principal (human → planner → sub-agent → tool).

The identity plane fills the chain from signed delegation tokens; until a token is
presented every action runs as ``ANONYMOUS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PrincipalKind(StrEnum):
    HUMAN = "human"
    AGENT = "agent"
    TOOL = "tool"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Link:
    id: str
    kind: PrincipalKind


@dataclass(frozen=True, slots=True)
class Principal:
    chain: tuple[Link, ...]

    @property
    def acting(self) -> Link:
        return self.chain[-1]

    @property
    def root(self) -> Link:
        return self.chain[0]

    def to_dict(self) -> list[dict[str, str]]:
        return [{"id": link.id, "kind": link.kind.value} for link in self.chain]

    def __str__(self) -> str:
        return " → ".join(link.id for link in self.chain)


ANONYMOUS = Principal((Link("anonymous", PrincipalKind.ANONYMOUS),))
