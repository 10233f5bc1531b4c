"""What route handlers reach for: the settings, the model store, the scheduler, the registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from quart import current_app

if TYPE_CHECKING:
    from trillama.actors.scheduler import Scheduler
    from trillama.config import Settings
    from trillama.lifecycle import Lifecycle
    from trillama.registry import Registry
    from trillama.store import ModelStore

__all__ = ["Services", "services"]


@attrs.frozen
class Services:
    settings: "Settings"
    store: "ModelStore"
    scheduler: "Scheduler | None" = None
    registry: "Registry | None" = None
    lifecycle: "Lifecycle | None" = None


def services() -> Services:
    return current_app.extensions["trillama"]
