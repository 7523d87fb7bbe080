"""`Hooks`: the hooks of `mailman_mta.hookspecs`, called through typed methods.

pluggy's hook relay takes any keywords and returns ``Any``: a misspelt
argument is found when it runs, if at all.  mailman-mta's own code calls
the hooks through `Hooks` instead, one method per hook with the spec's
arguments (``config`` is filled in), so mypy checks every call site, and
the "what do the answers mean" rules live in one place: any False from
`mta_session_allowed` wins, the longest pace is waited for, and hooks
nobody implements cost nothing.  Get one from `Configuration.hooks`: there
is one per configuration state, since a state's plugins never change.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import pluggy

if TYPE_CHECKING:
    from .config import Configuration
    from .config.settings import Settings
    from .envelope import Envelope
    from .interfaces import IConnection, ITransport
    from .routes import Route


#: The attribute `idle_unless` sets on a hook implementation.
IDLE_UNLESS = "mta_idle_unless"

_Function = TypeVar("_Function", bound=Callable[..., Any])


def idle_unless(predicate: Callable[[Settings], object]) -> Callable[[_Function], _Function]:
    """Mark a hook implementation that does nothing unless ``predicate(settings)`` is true.

    For a plugin that is enabled but whose feature is switched off by one
    of its settings (``devmode`` with ``[devmode] enabled: no``): `Hooks`
    asks *predicate* once per configuration state (whose settings never
    change) and leaves the implementation out of that state's calls, so it
    costs nothing per message.  pluggy itself, when it calls the hooks (a
    wrapper, a hook-call monitor), still calls it, so the implementation
    must check the setting too and do nothing then.  Goes under
    ``@hookimpl``.
    """

    def mark(function: _Function) -> _Function:
        setattr(function, IDLE_UNLESS, predicate)
        return function

    return mark


class _Call(NamedTuple):
    """One implementation as `Hooks` calls it: *pick* takes the arguments it names from the keywords.

    (`operator.itemgetter` picks them in C; it gives one value for one name,
    a tuple for several, which *spread* says.)
    """

    function: Callable[..., Any]
    pick: Callable[[dict[str, Any]], Any] | None
    spread: bool

    @classmethod
    def of(cls, function: Callable[..., Any], names: tuple[str, ...]) -> _Call:
        return cls(function, operator.itemgetter(*names) if names else None, len(names) > 1)


class Hooks:
    """The enabled plugins' hooks, for one configuration state (the pinned one, in a send).

    The hooks called for every message are called here directly, in
    pluggy's order and with pluggy's rules (each implementation gets the
    arguments it names; the answers that are not None, in call order; an
    exception stops the call), which costs a few microseconds less per
    message than pluggy's general machinery.  pluggy itself calls them
    whenever that machinery is needed: for a hook with a wrapper, and for
    every hook once someone watches hook calls
    (`pluggy.PluginManager.add_hookcall_monitoring`, `enable_tracing`).
    """

    __slots__ = ("config", "_manager", "_relay", "_plans", "_settings")

    def __init__(self, config: Configuration, manager: pluggy.PluginManager, settings: Settings) -> None:
        self.config = config
        self._manager = manager
        self._settings = settings
        self._relay: Any = manager.hook
        self._plans: dict[str, tuple[_Call, ...] | None] = {}

    def _plan(self, name: str) -> tuple[_Call, ...] | None:
        """How to call *name*'s implementations, in call order; None if pluggy must call them."""
        try:
            return self._plans[name]
        except KeyError:
            pass
        implementations = getattr(self._relay, name).get_hookimpls()
        plan = None
        if not any(i.hookwrapper or getattr(i, "wrapper", False) for i in implementations):
            plan = tuple(
                _Call.of(i.function, tuple(i.argnames)) for i in reversed(implementations) if self._working(i.function)
            )
        self._plans[name] = plan
        return plan

    def _working(self, function: Callable[..., Any]) -> bool:
        """Does *function* do anything in this state?  Not if `idle_unless` says it is idle."""
        predicate = getattr(function, IDLE_UNLESS, None)
        return predicate is None or bool(predicate(self._settings))

    def implemented(self, name: str) -> bool:
        """Does any enabled plugin implement the hook *name*?  Asked once per state."""
        plan = self._plan(name)
        return plan is None or bool(plan)

    def _each(self, name: str, **arguments: Any) -> list[Any]:
        """Call every implementation of *name*; their answers that are not None, in call order."""
        try:
            plan = self._plans[name]
        except KeyError:
            plan = self._plan(name)
        if plan is None or getattr(self._manager, "monitored", False):
            return getattr(self._relay, name)(config=self.config, **arguments)
        if not plan:
            return []
        arguments["config"] = self.config
        answers = []
        for function, pick, spread in plan:
            if pick is None:
                answer = function()
            elif spread:
                answer = function(*pick(arguments))
            else:
                answer = function(pick(arguments))
            if answer is not None:
                answers.append(answer)
        return answers

    # -- connections -----------------------------------------------------

    def create_transport(self, connection: IConnection) -> ITransport | None:
        """`mta_create_transport`: the first transport a plugin opens, or None."""
        return self._relay.mta_create_transport(config=self.config, connection=connection)

    def authenticate(self, connection: IConnection, transport: ITransport) -> bool | None:
        """`mta_authenticate`: True once a plugin logged in, None when none had to."""
        return self._relay.mta_authenticate(config=self.config, connection=connection, transport=transport)

    def session_allowed(self, connection: IConnection) -> bool:
        """`mta_session_allowed`: may the open connection carry another session?  Any False wins."""
        return False not in self._each("mta_session_allowed", connection=connection)

    def pace_transaction(self, connection: IConnection, envelope: Envelope) -> float:
        """`mta_pace_transaction`: the longest wait any plugin asks for, 0 for none."""
        delays = self._each("mta_pace_transaction", connection=connection, envelope=envelope)
        if not delays:
            return 0.0
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
        """`mta_screen_recipients`."""
        self._each("mta_screen_recipients", connection=connection, envelope=envelope)

    def prepare_copy(self, connection: IConnection, envelope: Envelope, recipient: str) -> None:
        """`mta_prepare_copy`."""
        self._each("mta_prepare_copy", connection=connection, envelope=envelope, recipient=recipient)

    def rewrite_recipients(self, connection: IConnection, envelope: Envelope) -> None:
        """`mta_rewrite_recipients`."""
        self._each("mta_rewrite_recipients", connection=connection, envelope=envelope)

    def prepare_message(self, connection: IConnection, envelope: Envelope) -> None:
        """`mta_prepare_message`."""
        self._each("mta_prepare_message", connection=connection, envelope=envelope)
