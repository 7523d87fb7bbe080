"""`Hooks`: the hooks of `mailman_mta.hookspecs`, called through typed methods.

pluggy's hook relay takes any keywords and returns ``Any``: a misspelt
argument is found when it runs, if at all.  mailman-mta's own code calls
the hooks through `Hooks` instead, one method per hook with the spec's
arguments (``config`` is filled in), so mypy checks every call site, and
the "what do the answers mean" rules live in one place: any False from
`mta_session_allowed` wins, the longest pace is waited for, and hooks
nobody implements cost no call.  Get one from `Configuration.hooks`: there
is one per configuration state, since a state's plugins never change.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Configuration
    from .envelope import Envelope
    from .interfaces import IConnection, ITransport
    from .routes import Route


class Hooks:
    """The enabled plugins' hooks, for one configuration state (the pinned one, in a send)."""

    __slots__ = ("config", "_relay", "_implemented")

    def __init__(self, config: Configuration, relay: Any) -> None:
        self.config = config
        self._relay = relay
        self._implemented: dict[str, bool] = {}

    def implemented(self, name: str) -> bool:
        """Does any enabled plugin implement the hook *name*?  Asked once per state."""
        known = self._implemented.get(name)
        if known is None:
            known = self._implemented[name] = bool(getattr(self._relay, name).get_hookimpls())
        return known

    # -- connections -----------------------------------------------------

    def create_transport(self, connection: IConnection) -> ITransport | None:
        """`mta_create_transport`: the first transport a plugin opens, or None."""
        return self._relay.mta_create_transport(config=self.config, connection=connection)

    def authenticate(self, connection: IConnection, transport: ITransport) -> bool | None:
        """`mta_authenticate`: True once a plugin logged in, None when none had to."""
        return self._relay.mta_authenticate(config=self.config, connection=connection, transport=transport)

    def session_allowed(self, connection: IConnection) -> bool:
        """`mta_session_allowed`: may the open connection carry another session?  Any False wins."""
        if not self.implemented("mta_session_allowed"):
            return True
        return False not in self._relay.mta_session_allowed(config=self.config, connection=connection)

    def pace_transaction(self, connection: IConnection, envelope: Envelope) -> float:
        """`mta_pace_transaction`: the longest wait any plugin asks for, 0 for none."""
        if not self.implemented("mta_pace_transaction"):
            return 0.0
        delays = self._relay.mta_pace_transaction(config=self.config, connection=connection, envelope=envelope)
        return max((d for d in delays if d is not None and math.isfinite(d)), default=0.0)

    def choose_route(self, domain: str) -> Route | None:
        """`mta_choose_route`: the route for recipients at *domain*, or None for ``[mta]``'s relay."""
        return self._relay.mta_choose_route(config=self.config, domain=domain)

    @property
    def routes(self) -> bool:
        """Does any enabled plugin choose routes?  (If not, nobody need be asked.)"""
        return self.implemented("mta_choose_route")

    # -- messages ----------------------------------------------------------

    def screen_recipients(self, connection: IConnection, envelope: Envelope) -> None:
        """`mta_screen_recipients`, when a plugin implements it."""
        if self.implemented("mta_screen_recipients"):
            self._relay.mta_screen_recipients(config=self.config, connection=connection, envelope=envelope)

    def prepare_copy(self, connection: IConnection, envelope: Envelope, recipient: str) -> None:
        """`mta_prepare_copy`, when a plugin implements it."""
        if self.implemented("mta_prepare_copy"):
            self._relay.mta_prepare_copy(
                config=self.config, connection=connection, envelope=envelope, recipient=recipient
            )

    def rewrite_recipients(self, connection: IConnection, envelope: Envelope) -> None:
        """`mta_rewrite_recipients`, when a plugin implements it."""
        if not self.implemented("mta_rewrite_recipients"):
            return
        self._relay.mta_rewrite_recipients(config=self.config, connection=connection, envelope=envelope)

    def prepare_message(self, connection: IConnection, envelope: Envelope) -> None:
        """`mta_prepare_message`, when a plugin implements it."""
        if self.implemented("mta_prepare_message"):
            self._relay.mta_prepare_message(config=self.config, connection=connection, envelope=envelope)
