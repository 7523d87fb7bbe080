"""Delivery strategies: bulk chunking by domain, individual copies, VERP."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mailman_mta import hookimpl, verp
from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery, chunk_by_domain, domain_of
from mailman_mta.errors import ConfigurationError
from mailman_mta.manager import registry

MESSAGE = "Subject: post\n\nHello\n"

# Address parts: RFC 5321 dot-atoms of letters, digits and the punctuation
# real local parts use, including the VERP delimiters themselves.
local_parts = st.from_regex(r"[a-z0-9+=_-]{1,8}(?:\.[a-z0-9+=_-]{1,8}){0,2}", fullmatch=True)
labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
addresses = st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains)


# -- chunking ------------------------------------------------------------


@given(st.lists(addresses, max_size=200), st.integers(min_value=0, max_value=50))
def test_every_recipient_is_in_exactly_one_chunk(recipients, limit):
    chunks = chunk_by_domain(recipients, limit)
    assert Counter(itertools.chain.from_iterable(chunks)) == Counter(recipients)
    assert all(chunks), "no empty chunks"
    if limit:
        assert all(len(chunk) <= limit for chunk in chunks)
    else:
        assert len(chunks) <= 1


@given(st.lists(addresses, max_size=200), st.integers(min_value=1, max_value=50))
def test_chunks_keep_domains_together_and_in_order(recipients, limit):
    chunks = chunk_by_domain(recipients, limit)
    flat = list(itertools.chain.from_iterable(chunks))
    keys = [domain_of(address) for address in flat]
    assert keys == sorted(keys)
    sizes = Counter(keys)
    for chunk in chunks:
        for key in {domain_of(address) for address in chunk}:
            if sizes[key] <= limit:
                # A domain that fits in one chunk is never split across two.
                assert sum(domain_of(address) == key for address in chunk) == sizes[key]


@given(st.lists(addresses, min_size=1, max_size=100), st.integers(min_value=1, max_value=10))
def test_chunking_wastes_no_transactions(recipients, limit):
    chunks = chunk_by_domain(recipients, limit)
    # Two neighbouring chunks could not have been one.
    for first, second in zip(chunks, chunks[1:]):
        assert len(first) + len(second) > limit or domain_of(first[-1]) == domain_of(second[0])


def test_subdomains_sort_next_to_their_domain():
    recipients = ["a@example.org", "b@mail.example.com", "c@example.com", "d@example.net"]
    assert chunk_by_domain(recipients, 0) == [["c@example.com", "b@mail.example.com", "d@example.net", "a@example.org"]]


def test_bulk_delivery_uses_one_transaction_per_chunk(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("chunks", "[mta]\nmax_recipients: 3\n")
    recipients = [f"m{i}@example.com" for i in range(5)] + ["x@example.org", "y@example.org"]
    with Delivery() as delivery:
        result = delivery.deliver("list@example.com", recipients, MESSAGE)
    assert result.ok and result.transactions == 3
    # Over several connections at once, in whatever order they finish.
    assert sorted(r.rcpt_tos for r in mta_smtpd.received) == [
        ("m0@example.com", "m1@example.com", "m2@example.com"),
        ("m3@example.com", "m4@example.com"),
        ("x@example.org", "y@example.org"),
    ]


def test_bulk_merges_refusals_from_every_chunk(mta_config, mta_smtpd, mta_layers):
    # One connection, so that the scripted fault hits the first chunk.
    mta_layers.push("chunks", "[mta]\nmax_recipients: 2\nmax_connections: 1\n")
    mta_smtpd.refuse_recipient("b@example.com", "550 5.1.1 No")
    mta_smtpd.refuse_recipient("d@example.org", "451 4.3.0 Later")
    mta_smtpd.script("MAIL", reply="452 4.3.1 Full", times=1)
    with Delivery() as delivery:
        result = delivery.deliver(
            "l@example.com",
            ["a@example.com", "b@example.com", "c@example.org", "d@example.org", "e@example.net"],
            MESSAGE,
        )
    assert result.transactions == 3
    assert {r: f.code for r, f in result.refused.items()} == {
        "a@example.com": 452,
        "b@example.com": 452,
        "d@example.org": 451,
    }
    assert result.accepted == ("c@example.org", "e@example.net")


# -- individual and VERP -------------------------------------------------


def test_individual_delivery_sends_one_copy_each(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("individual", "[mta]\ndelivery: individual\n")
    with Delivery() as delivery:
        result = delivery.deliver("list@example.com", ["a@example.com", "b@example.com", "c@example.com"], MESSAGE)
    assert result.transactions == 3
    assert sorted(r.rcpt_tos for r in mta_smtpd.received) == [
        ("a@example.com",),
        ("b@example.com",),
        ("c@example.com",),
    ]
    assert {r.mail_from for r in mta_smtpd.received} == {"list@example.com"}


def test_a_failing_copy_fails_alone(mta_config, mta_smtpd, mta_layers):
    class Picky:
        @hookimpl
        def mta_prepare_copy(self, recipient):
            if recipient.startswith("b"):
                raise ConfigurationError("[plugin.picky] cannot personalise for b")

    registry.add("picky", Picky())
    try:
        mta_layers.push("picky", "[mta]\ndelivery: individual\n[plugin.picky]\nenabled: yes\n")
        with Delivery() as delivery:
            result = delivery.deliver("list@example.com", ["a@example.com", "b@example.com"], MESSAGE)
    finally:
        mta_layers.pop_all()
        registry.remove("picky")
    assert result.accepted == ("a@example.com",)
    assert result.refused["b@example.com"].code == 451


def test_verp_delivery(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("verp", "[mta]\ndelivery: verp\n")
    with Delivery() as delivery:
        result = delivery.deliver("bounces@lists.example.org", ["anne@example.com", "a+b=c@example.net"], MESSAGE)
    assert result.ok
    senders = sorted(r.mail_from for r in mta_smtpd.received)
    assert senders == ["bounces+a+b=c=example.net@lists.example.org", "bounces+anne=example.com@lists.example.org"]
    assert [verp.decode(s) for s in senders] == ["a+b=c@example.net", "anne@example.com"]


def test_verp_with_devmode_encodes_the_real_member(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("both", "[mta]\ndelivery: verp\n[devmode]\nenabled: yes\nrecipient: dev@example.com\n")
    with Delivery() as delivery:
        delivery.deliver("bounces@lists.example.org", ["anne@example.com"], MESSAGE)
    (received,) = mta_smtpd.received
    assert (received.mail_from, received.rcpt_tos) == (
        "bounces+anne=example.com@lists.example.org",
        ("dev@example.com",),
    )


def test_verp_format_from_a_layer(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("format", "[mta]\ndelivery: verp\n[verp]\nformat: $bounces-$local=$domain@$bounces_domain\n")
    with Delivery() as delivery:
        delivery.deliver("owner@lists.example.org", ["anne@example.com"], MESSAGE)
    assert mta_smtpd.received[0].mail_from == "owner-anne=example.com@lists.example.org"


@pytest.mark.parametrize(
    "format, words",
    [
        ("$bounces+$local@$bounces_domain", "must contain $local and $domain"),
        ("$bounces+$local=$domain=$local@x", "uses $local more than once"),
        ("$who+$local=$domain@$bounces_domain", "unknown names: who"),
        (
            "$bounces-$local-$domain@$bounces_domain",
            "is ambiguous: 'a+b=c-d.e@sub-1.example.co.uk' would not decode back",
        ),
    ],
)
def test_a_bad_verp_format_is_refused_by_name(mta_config, format, words):
    with pytest.raises(ConfigurationError, match=r"\[verp\] format: ") as caught:
        mta_config.push("bad", f"[verp]\nformat: {format}\n")
    assert words in str(caught.value)


def test_a_recipient_verp_cannot_encode_is_refused_alone(mta_smtpd):
    quoted = '"anne smith"@example.com'
    with Delivery(Connection(mta_smtpd.hostname, mta_smtpd.port, 0, delivery="verp")) as delivery:
        result = delivery.deliver("bounces@lists.example.org", [quoted, "bart@example.com"], MESSAGE)
    assert result.accepted == ("bart@example.com",)
    assert result.refused[quoted].code == 553
    assert "would not be an envelope address" in result.refused[quoted].message
    assert [r.mail_from for r in mta_smtpd.received] == ["bounces+bart=example.com@lists.example.org"]


FORMATS = [
    "$bounces+$local=$domain@$bounces_domain",
    "$bounces-$local=$domain@$bounces_domain",
    "bounce.$local=$domain@$bounces_domain",
    "$bounces+$local=$domain@verp.$bounces_domain",
]
plain_senders = st.builds(
    lambda local, domain: f"{local}@{domain}", st.from_regex(r"[a-z0-9_]{1,20}", fullmatch=True), domains
)


@given(st.sampled_from(FORMATS), plain_senders, addresses)
def test_verp_round_trips_for_ordinary_senders(format, sender, recipient):
    encoded = verp.encode(sender, recipient, verp.check_format(format))
    assert verp.decode(encoded, format) == recipient
    assert encoded.endswith(sender.rpartition("@")[2])


@settings(max_examples=200)
@given(st.sampled_from(FORMATS), addresses, addresses)
def test_verp_never_encodes_what_it_cannot_decode(format, sender, recipient):
    try:
        encoded = verp.encode(sender, recipient, format)
    except verp.VERPError as error:
        assert "cannot VERP-encode" in str(error)
    else:
        assert verp.decode(encoded, format) == recipient


def test_a_sender_containing_the_delimiter_is_refused():
    with pytest.raises(verp.VERPError, match="does the sender contain the format's delimiter"):
        verp.encode("list+bounces@example.org", "a+b@example.com")


@given(st.text(max_size=40))
def test_decoding_anything_else_raises_a_clear_error(text):
    assume(not verp._regex(verp.DEFAULT_FORMAT).match(text))
    with pytest.raises(verp.VERPError, match="is not a VERP address"):
        verp.decode(text)
