"""Set up and look into a GNU Mailman site, for tests/test_mailman_site.py.

Run with the Python of the environment Mailman is installed in, against a
site's mailman.cfg:

    python site_tool.py setup MAILMAN_CFG LISTS_JSON   # create lists and members
    python site_tool.py inspect MAILMAN_CFG            # print what the site holds, as JSON

``LISTS_JSON`` is a list of {"address", "personalize", "members"}, members
being "Name <address>" or bare addresses.  Lists accept posts from anyone
(the test posts come from a non-member).  ``inspect`` prints the bounce
events, and the metadata of the messages in the retry, shunt and
unfinished queues, for the test to compare between sites.  Everything
else (starting, injecting posts, stopping) is done with Mailman's own
``mailman`` command, as a site administrator does it.
"""

import json
import pickle
import sys
from email.utils import parseaddr
from pathlib import Path

from mailman.core.initialize import initialize


def setup(lists):
    from mailman.app.lifecycle import create_list
    from mailman.app.membership import add_member
    from mailman.config import config
    from mailman.interfaces.action import Action
    from mailman.interfaces.domain import IDomainManager
    from mailman.interfaces.mailinglist import Personalization
    from mailman.interfaces.member import DeliveryMode
    from mailman.interfaces.subscriptions import RequestRecord
    from zope.component import getUtility

    domains = getUtility(IDomainManager)
    for spec in lists:
        mail_host = spec["address"].partition("@")[2]
        if domains.get(mail_host) is None:
            domains.add(mail_host)
        mlist = create_list(spec["address"])
        mlist.default_nonmember_action = Action.accept
        mlist.personalize = Personalization[spec["personalize"]]
        mlist.send_welcome_message = False
        for member in spec["members"]:
            name, address = parseaddr(member)
            add_member(mlist, RequestRecord(address, name, DeliveryMode.regular, "en"))
    config.db.commit()


def inspect():
    from mailman.config import config
    from mailman.interfaces.bounce import IBounceProcessor
    from zope.component import getUtility

    events = [
        {"email": event.email, "list_id": event.list_id, "context": event.context.name}
        for event in getUtility(IBounceProcessor).events
    ]
    queues = {}
    for name in ("in", "pipeline", "out", "retry", "shunt"):
        entries = []
        # Read the queue files as they lie, leaving them where they are.
        directory = Path(config.switchboards[name].queue_directory)
        for path in sorted([*directory.glob("*.pck"), *directory.glob("*.bak")]):
            with path.open("rb") as file:
                msg = pickle.load(file)
                msgdata = pickle.load(file)
            entries.append(
                {
                    "message_id": msg.get("message-id"),
                    "recipients": sorted(msgdata.get("recipients", [])),
                    "listid": msgdata.get("listid"),
                }
            )
        queues[name] = sorted(entries, key=lambda entry: (entry["message_id"] or "", entry["recipients"]))
    return {"bounce_events": sorted(events, key=lambda e: (e["list_id"], e["email"])), "queues": queues}


def main():
    command, cfg = sys.argv[1], sys.argv[2]
    initialize(cfg)
    if command == "setup":
        with open(sys.argv[3], encoding="utf-8") as file:
            setup(json.load(file))
    elif command == "inspect":
        json.dump(inspect(), sys.stdout, indent=1)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
