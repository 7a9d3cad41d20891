"""A traced query's verdict from where its messages were found and how far each group committed."""

from infaas.tracing import Hop, QueryTrace

SENT = Hop("p.queries", 0, 10, 1_000, "p-dispatcher", committed=11)
SENT_UNREAD = Hop("p.queries", 0, 10, 1_000, "p-dispatcher", committed=7)
ROUTED = Hop("p.variant.m.ort-fp32.cpu-1t.b1", 1, 5, 1_010, "p.variant.m.ort-fp32.cpu-1t.b1", committed=6)
ROUTED_UNREAD = Hop("p.variant.m.ort-fp32.cpu-1t.b1", 1, 5, 1_010, "p.variant.m.ort-fp32.cpu-1t.b1", committed=None)
ANSWER = Hop("p.results.demo", 0, 3, 1_030, status="OK")


def test_each_place_a_query_can_be_gets_its_verdict():
    assert QueryTrace("q", (SENT,), (ROUTED,), (ANSWER,)).verdict() == "answered (OK)"
    assert QueryTrace("q", (SENT,), (ROUTED,), (ANSWER, ANSWER)).verdict() == "answered (OK), 2 times"
    assert QueryTrace("q", (SENT,), (ROUTED,), ()).verdict().startswith("LOST at a worker")
    assert QueryTrace("q", (SENT,), (ROUTED_UNREAD,), ()).verdict().startswith("waiting: routed to")
    assert QueryTrace("q", (SENT,), (), ()).verdict().startswith("LOST at the dispatcher")
    assert QueryTrace("q", (SENT_UNREAD,), (), ()).verdict().startswith("waiting: in p.queries")
    assert QueryTrace("q", (), (), ()).verdict().startswith("not found")


def test_a_hop_is_consumed_only_once_its_group_committed_past_it():
    assert SENT.consumed and not SENT_UNREAD.consumed and not ROUTED_UNREAD.consumed
    assert not Hop("t", 0, 10, 0, "g", committed=10).consumed  # committed 10: offset 10 is the next to read


def test_the_lines_name_every_hop():
    lines = QueryTrace("q", (SENT,), (ROUTED,), (ANSWER,)).lines()
    assert lines[0] == "query q: answered (OK)"
    assert [line.split()[0] for line in lines[1:]] == ["sent", "routed", "answered"]
    assert "group p-dispatcher committed 11" in lines[1] and ": OK" in lines[3]
