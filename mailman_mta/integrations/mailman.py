"""GNU Mailman 3: mailman-mta as Mailman's outgoing delivery, following its configuration.

A Mailman site switches its delivery to mailman-mta in ``mailman.cfg``::

    [mta]
    outgoing: mailman_mta.integrations.mailman.deliver

    # Optional: mailman-mta's own settings (connections, plugins, limits).
    [plugin.mailman_mta]
    class: mailman_mta.integrations.mailman.MailmanPlugin
    enabled: yes
    configuration: /etc/mailman3/mailman-mta.cfg

Importing this module makes mailman-mta's default configuration follow
Mailman's, live (`mailman_mta.config.Configuration.follow`): a push or
pop of Mailman's ``[mta]`` or ``[devmode]`` drives our settings and
plugins from the next send.  The keys, theirs on the left:

======================================  ==============================================
Mailman                                 mailman-mta
======================================  ==============================================
``[mta] smtp_host``                     ``[mta] smtp_host``
``[mta] smtp_port``                     ``[mta] smtp_port``
``[mta] smtp_user``                     ``[mta] smtp_user``
``[mta] smtp_pass``                     ``[mta] smtp_pass``
``[mta] smtp_secure_mode``              ``[mta] secure_mode``
``[mta] smtp_verify_cert``              ``[mta] verify_cert``
``[mta] smtp_verify_hostname``          ``[mta] verify_hostname``
``[mta] max_recipients``                ``[mta] max_recipients``
``[mta] max_sessions_per_connection``   ``[mta] max_sessions_per_connection``
``[devmode] enabled``                   ``[devmode] enabled``
``[devmode] recipient``                 ``[devmode] recipient``
======================================  ==============================================

Every other setting of ours comes from the site file: the file named by
``configuration`` in ``[plugin.mailman_mta]`` (a path, or Mailman's
``python:`` form), or else by ``$MAILMAN_MTA_CONFIG``, pushed as a layer
on the default configuration (see `SiteConfiguration`).  A setting placed
where it would do nothing is refused, naming it, rather than ignored: one
of ours in Mailman's ``[mta]`` (Mailman ignores keys it does not know),
one of the keys above in the site file (Mailman's value is the one in
use), and ``[mta] delivery`` or ``[verp]`` (Mailman decides, per post,
between bulk delivery and one copy per member, and makes VERP senders
itself).  While the configuration is refused, every post is handed back to
Mailman's out runner with the reason, which shunts it (Mailman's error log
says why; ``mailman unshunt`` sends it once the configuration is mended),
so nothing is lost or sent on a setting nobody meant.
"""

from __future__ import annotations

import configparser
import copy
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lazr.config.interfaces import ConfigErrors
from mailman.config import config as mailman_config
from mailman.config.config import load_external
from mailman.interfaces.mailinglist import Personalization
from mailman.interfaces.mta import SomeRecipientsFailed
from mailman.interfaces.plugin import IPlugin
from mailman.mta.arc_signing import ARCSigningMixin
from mailman.mta.decorating import DecoratingMixin
from mailman.mta.deliver import Deliver
from mailman.utilities.string import expand
from zope.interface import implementer

from mailman_mta.config import Configuration
from mailman_mta.config import config as default_config
from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.errors import ConfigurationError
from mailman_mta.results import DeliveryResult, Failure

log = logging.getLogger("mailman.smtp")
error_log = logging.getLogger("mailman.error")

#: Our key -> Mailman's key (and how its text becomes ours).
MAILMAN_KEYS: Mapping[str, Any] = {
    "mta.smtp_host": "mta.smtp_host",
    "mta.smtp_port": "mta.smtp_port",
    "mta.smtp_user": "mta.smtp_user",
    "mta.smtp_pass": "mta.smtp_pass",
    "mta.secure_mode": ("mta.smtp_secure_mode", str.lower),
    "mta.verify_cert": "mta.smtp_verify_cert",
    "mta.verify_hostname": "mta.smtp_verify_hostname",
    "mta.max_recipients": "mta.max_recipients",
    "mta.max_sessions_per_connection": "mta.max_sessions_per_connection",
    "devmode.enabled": "devmode.enabled",
    "devmode.recipient": "devmode.recipient",
}

NAME = "Mailman's configuration"

#: The section of mailman.cfg that names the site file, and the variable that can name it instead.
PLUGIN_SECTION = "plugin.mailman_mta"
SITE_FILE_VARIABLE = "MAILMAN_MTA_CONFIG"

#: Settings of ours that a site file may not set inside Mailman, and why.
DECIDED_BY_MAILMAN = {
    ("mta", "delivery"): (
        "Mailman chooses for each post between bulk delivery and one copy per member "
        "(VERP, personalization), so this key would do nothing here"
    ),
    ("verp", "*"): "Mailman makes VERP senders itself, from its own [mta] verp_format and verp_regexp",
}


def follow_mailman(config: Configuration = default_config) -> None:
    """Make *config* follow Mailman's ``[mta]`` and ``[devmode]`` (done on import for the default)."""
    config.follow(lambda: getattr(mailman_config, "_config", None), MAILMAN_KEYS, name=NAME)


follow_mailman()


# -- the site's own settings --------------------------------------------------


class SiteConfiguration:
    """The site file as a layer of *config*, kept in step with Mailman's configuration.

    `check` is called before each post: when Mailman's configuration (its
    layer stack) or ``$MAILMAN_MTA_CONFIG`` changed since the last call, it
    looks again for settings of ours in the wrong place, and lays the site
    file again if another one is named.  It raises `ConfigurationError`,
    naming the file, section and key, for as long as something is wrong.
    """

    def __init__(self, config: Configuration = default_config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._seen: tuple[object, str | None] | None = None
        self._problem: ConfigurationError | None = None
        #: (the name the site file was given by, the layer it was pushed as).
        self.laid: tuple[str, str] | None = None

    def check(self) -> None:
        seen = (getattr(mailman_config, "_config", None) and mailman_config._config.overlays, _variable())
        with self._lock:
            if seen != self._seen:
                self._problem = None
                try:
                    self._refresh()
                except ConfigurationError as problem:
                    self._problem = problem
                self._seen = seen
            if self._problem is not None:
                raise self._problem

    def _refresh(self) -> None:
        misplaced_in_mailman(self.config)
        named = site_file()
        if self.laid is not None and self.laid[0] != named:
            self.config.pop(self.laid[1])
            self.laid = None
        if named is None or self.laid is not None:
            return
        try:
            text = load_external(named)
        except (OSError, ValueError, ImportError) as error:
            raise ConfigurationError(f"cannot read the mailman-mta site file {named!r}: {error}") from error
        refuse_what_mailman_decides(named, text)
        layer = os.path.basename(named.removeprefix("python:")) or named
        self.config.push(layer, text)
        self.laid = (named, layer)


def _variable() -> str | None:
    return os.environ.get(SITE_FILE_VARIABLE) or None


def site_file() -> str | None:
    """Where the site's mailman-mta settings are: ``[plugin.mailman_mta] configuration``, or ``$MAILMAN_MTA_CONFIG``.

    Raises `ConfigurationError` when the two name different files.
    """
    named = None
    lazr = getattr(mailman_config, "_config", None)
    if lazr is not None:
        try:
            named = lazr[PLUGIN_SECTION]["configuration"].strip() or None
        except (KeyError, configparser.NoSectionError):
            named = None
    variable = _variable()
    if named and variable and named != variable:
        raise ConfigurationError(
            f"two mailman-mta site files are named: {named!r} by [{PLUGIN_SECTION}] configuration in "
            f"mailman.cfg, and {variable!r} by ${SITE_FILE_VARIABLE}; name one"
        )
    return named or variable


def refuse_what_mailman_decides(named: str, text: str) -> None:
    """Refuse a site file that sets what Mailman's configuration decides inside Mailman."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    try:
        parser.read_string(text, source=named)
    except configparser.Error:
        return  # the push that follows names the problem
    for section in parser.sections():
        for key in parser.options(section):
            theirs = MAILMAN_KEYS.get(f"{section}.{key}")
            if theirs is not None:
                their_key = theirs[0] if isinstance(theirs, tuple) else theirs
                their_section, _, their_name = their_key.partition(".")
                raise ConfigurationError(
                    f"the mailman-mta site file {named!r} sets [{section}] {key}, which follows Mailman's "
                    f"[{their_section}] {their_name} inside Mailman: set that in mailman.cfg instead",
                    layer=named,
                    section=section,
                    key=key,
                )
            why = DECIDED_BY_MAILMAN.get((section, key)) or DECIDED_BY_MAILMAN.get((section, "*"))
            if why is not None:
                raise ConfigurationError(
                    f"the mailman-mta site file {named!r} sets [{section}] {key}: {why}",
                    layer=named,
                    section=section,
                    key=key,
                )


_UNKNOWN_KEY = re.compile(r"^(?P<section>\S+) does not have a (?P<key>\S+) key\.$")
_UNKNOWN_SECTION = re.compile(r"^\S+ does not have a (?P<section>\S+) section\.$")


def misplaced_in_mailman(config: Configuration = default_config) -> None:
    """Refuse settings of *config*'s written into mailman.cfg, where Mailman ignores them.

    Mailman does not refuse keys or sections it does not know: ``[mta]
    max_connections: 8`` in mailman.cfg is read by nobody.  lazr.config
    remembers them as errors of the layer, which `Config.validate` reports.
    A ``[plugin.NAME]`` section naming one of our plugins without a class
    is Mailman's plugin table, not ours, and is refused too.
    """
    lazr = getattr(mailman_config, "_config", None)
    if lazr is None:
        return
    try:
        lazr.validate()
        errors: list[Exception] = []
    except ConfigErrors as problems:
        errors = list(problems.errors)
    for error in errors:
        text = str(error)
        key = _UNKNOWN_KEY.match(text)
        if key is not None and key["section"] in ("mta", "devmode") and _known(config, key["section"], key["key"]):
            raise ConfigurationError(
                f"mailman.cfg sets [{key['section']}] {key['key']}, a mailman-mta setting, where Mailman "
                f"ignores it: set it in the mailman-mta site file ([{PLUGIN_SECTION}] configuration)",
                section=key["section"],
                key=key["key"],
            )
        section = _UNKNOWN_SECTION.match(text)
        if section is not None and _known(config, section["section"]):
            raise ConfigurationError(
                f"mailman.cfg has a [{section['section']}] section, a mailman-mta setting, where Mailman "
                f"ignores it: put it in the mailman-mta site file ([{PLUGIN_SECTION}] configuration)",
                section=section["section"],
            )
    ours = set(config.registry.names())
    for name, section in mailman_config.plugin_configs:
        if name in ours and not section["class"].strip():
            raise ConfigurationError(
                f"mailman.cfg has [plugin.{name}] without a class: that is Mailman's plugin table, and "
                f"mailman-mta's {name} plugin is switched in the mailman-mta site file "
                f"([{PLUGIN_SECTION}] configuration)",
                section=f"plugin.{name}",
            )


def _known(config: Configuration, section: str, key: str | None = None) -> bool:
    """Is ``[section]`` (and *key* in it) one of *config*'s settings?"""
    try:
        keys = config[section].schema
    except (KeyError, configparser.NoSectionError):
        return False
    return key is None or key in keys


site_configuration = SiteConfiguration()


@implementer(IPlugin)
class MailmanPlugin:
    """mailman-mta as a Mailman plugin: ``[plugin.mailman_mta] class`` in mailman.cfg.

    Optional (``[mta] outgoing`` alone is enough); it gives the site file a
    home in mailman.cfg, and checks the configuration whenever a Mailman
    process starts (each runner, each ``mailman`` command), so that a
    mistake shows in Mailman's error log before the first post.
    """

    resource = None

    def pre_hook(self) -> None:
        """Nothing to do before Mailman's database is ready."""

    def post_hook(self) -> None:
        """Check the configuration now, logging what is wrong (posts are refused until it is mended)."""
        try:
            site_configuration.check()
            problem = default_config.problem
        except ConfigurationError as error:
            problem = str(error)
        if problem is not None:
            error_log.error("mailman-mta: posts will be shunted until this is mended: %s", problem)


# -- delivery --------------------------------------------------------------


class _BulkSteps(DecoratingMixin, ARCSigningMixin):
    """Mailman's own steps for a post sent to many at once: decorate it, then ARC-sign it, once, in place."""


def deliver(mlist: Any, msg: Any, msgdata: dict) -> None:
    """Mailman's outgoing delivery function, sending through mailman-mta.

    The contract of ``mailman.mta.deliver.deliver``: send *msg* to
    ``msgdata['recipients']``; return None when every recipient took it,
    or raise `SomeRecipientsFailed` naming the recipients to retry and
    those refused for good (with the code and reply for the bounce that
    Mailman makes).  A recipient is permanent only when the server
    refused it with a 5xx (see `mailman_mta.results`), so a relay's
    trouble never registers bounces.

    Mailman's own steps shape what is sent, as its delivery does: a bulk
    post is decorated (list header and footer) and ARC-signed once, in
    place, and goes out as mailman-mta's bulk delivery (by domain, in
    ``max_recipients`` chunks, over ``[mta] max_connections``
    connections).  A VERP'd or personalized post gets one copy per
    recipient, each made by Mailman's ``Deliver`` agent (duplicate
    marking, decoration, personalization, ARC signing) and sent from the
    sender that agent gives (VERP from Mailman's ``verp_format``), over
    the same pool.  ``smtp.log`` gets Mailman's lines (``[logging.smtp]``
    every, success or refused, and failure per recipient).

    Raises `ConfigurationError`, sending nothing, while the configuration
    is refused (see the module docstring); Mailman's runner then shunts the
    post and logs why.
    """
    recipients = msgdata.get("recipients")
    if not recipients:
        return
    site_configuration.check()
    problem = default_config.problem
    if problem is not None:
        raise ConfigurationError(f"mailman-mta sends nothing while its configuration is refused: {problem}")
    individual = msgdata.get("verp", False) or (mlist is not None and mlist.personalize != Personalization.none)
    agent = Deliver()
    started = time.time()
    with Delivery(Connection(delivery="bulk")) as delivery:
        if individual:
            results = list(delivery.deliver_many(_copies(agent, mlist, msg, msgdata, sorted(recipients))))
        else:
            if mlist is not None:
                steps = _BulkSteps()
                steps.decorate(mlist, msg, msgdata)
                steps.arc_sign(mlist, msg, msgdata)
            sender = agent._get_sender(mlist, msg, msgdata)
            results = [delivery.deliver(sender, sorted(recipients), msg)]
    refused = {recipient: failure for result in results for recipient, failure in result.refused.items()}
    _log_post(mlist, msg, msgdata, time.time() - started, refused, results)
    temporary = [recipient for recipient, failure in refused.items() if failure.temporary]
    permanent = [(recipient, f.code, f.message) for recipient, f in refused.items() if f.permanent]
    if temporary or permanent:
        raise SomeRecipientsFailed(temporary, permanent)


def _copies(
    agent: Deliver, mlist: Any, msg: Any, msgdata: dict, recipients: Sequence[str]
) -> Iterator[tuple[str, list[str], Any]]:
    """(sender, [recipient], message) for each recipient, made by Mailman's own per-copy steps."""
    for recipient in recipients:
        message = copy.deepcopy(msg)
        data = dict(
            msgdata, recipient=recipient, member=mlist.members.get_member(recipient) if mlist is not None else None
        )
        for callback in agent.callbacks:
            callback(mlist, message, data)
        yield agent._get_sender(mlist, message, data), [recipient], message


def _log_post(
    mlist: Any, msg: Any, msgdata: dict, seconds: float, refused: dict[str, Failure], results: list[DeliveryResult]
) -> None:
    """Mailman's ``[logging.smtp]`` lines for this post, as its own delivery writes them.

    The placeholders are Mailman's (``$msgid``, ``$listname``, ``$sender``,
    ``$recip``, ``$size``, ``$time``, ``$refused``, ``$smtpcode``,
    ``$smtpmsg``); a template set to ``no`` is not written.  For a refused
    recipient, ``$smtpcode`` and ``$smtpmsg`` are mailman-mta's verdict:
    the server's own code and text where it refused, otherwise the code
    and reason of `mailman_mta.results` (a lost connection is 444, as in
    Mailman; a 552 is logged as the temporary 452 it is taken for).
    """
    templates = mailman_config.logging.smtp
    size = getattr(msg, "original_size", msgdata.get("original_size"))
    values: dict[str, Any] = {
        "msgid": msg.get("message-id", "n/a").strip(),
        "listname": mlist.fqdn_listname if mlist is not None else "n/a",
        "sender": msgdata.get("original-sender", msg.sender),
        "recip": len(msgdata["recipients"]),
        "size": len(msg.as_string()) if size is None else size,
        "time": seconds,
        "refused": len(refused),
        "smtpcode": "n/a",
        "smtpmsg": "n/a",
    }

    def write(template: str, **extra: Any) -> None:
        if template.lower() != "no":
            log.info("%s", expand(template, mlist, dict(values, **extra)))

    write(templates.every)
    if refused:
        write(templates.refused)
    elif msgdata.get("to_list", False):
        write(templates.success)
    else:
        # Not a list post (to the owners, say): the addressees, as Mailman does.
        addressees = msg.get_all("to", []) + msg.get_all("cc", [])
        write(templates.success, recip=",".join(map(str, addressees)))
    for recipient, failure in refused.items():
        write(templates.failure, recip=recipient, smtpcode=failure.code, smtpmsg=failure.message)
    dropped = [f"{address} ({reason})" for result in results for address, reason in result.dropped.items()]
    if dropped:
        # Neither delivered nor failed: Mailman neither retries nor bounces them.
        log.info("%s %d recipient(s) left out by a plugin: %s", values["msgid"], len(dropped), ", ".join(dropped))
    uncertain = sorted(address for result in results for address in result.uncertain)
    if uncertain:
        log.warning(
            "%s the connection was lost after the whole message was sent to %d recipient(s), "
            "who may have it already: %s",
            values["msgid"],
            len(uncertain),
            ", ".join(uncertain),
        )
