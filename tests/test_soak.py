"""A few seconds of the soak (tests/soak.py; `make soak` runs minutes)."""

from soak import soak


def test_short_soak(daemon):
    r = soak(daemon, seconds=4, domains=3, workers=2)
    assert not r.errors, r.errors
    assert r.hypercalls > 200 and r.dmas > 20 and r.clients == 6
