"""What an operator should know about the configuration, though nothing is wrong with it: told
once at start-up (a ``notice`` event) and in ``GET /api/health``'s ``notices``."""
from __future__ import annotations

from dataclasses import dataclass

from .settings import Settings

EXCHANGE_END_OF_SUPPORT = "2024-02-19"


@dataclass(frozen=True)
class Notice:
    code: str
    target: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "target": self.target, "message": self.message}


def configuration_notices(settings: Settings) -> list[Notice]:
    found = []
    if "exchange" in settings.sync_targets:
        found.append(Notice(
            "ExchangeConnectorOutOfSupport", "exchange",
            f"Microsoft ended support for the on-premises Intune Exchange connector on {EXCHANGE_END_OF_SUPPORT}; "
            "after that date the connector no longer syncs with Intune. This app still calls Graph's sync action "
            "for every connected connector a tenant still has, but Microsoft recommends moving to Exchange Online "
            "or Exchange hybrid modern authentication (docs/operations.md).",
        ))
    return found
