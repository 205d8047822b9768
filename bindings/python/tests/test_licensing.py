"""Tests of the `tally` package against a real `tally host run --dev`.

Run by crates/tally-cli/tests/integration/embedding.rs, which starts the host and sets:
TALLY_TEST_HOST (HOST:PORT), TALLY_TEST_TRUST (the host's authority.pub) and
TALLY_TEST_SERVER_KEY (a server edition's setup key, threshold 5).
"""

import os
import threading

import pytest

import tally

HOST = os.environ.get("TALLY_TEST_HOST")
TRUST = os.environ.get("TALLY_TEST_TRUST")
SERVER_KEY = os.environ.get("TALLY_TEST_SERVER_KEY", "FW777-M677J-W8KJV-QG4VJ-HC6WP")

needs_host = pytest.mark.skipif(HOST is None, reason="TALLY_TEST_HOST not set")


def test_a_fresh_installation_is_unlicensed(tmp_path):
    status = tally.Licensing(str(tmp_path)).status()
    assert status.licensed is False
    assert status.permanent is False
    assert status.state == "unlicensed"
    assert status.edition is None


def test_an_unusable_key_raises_with_its_code(tmp_path):
    licensing = tally.Licensing(str(tmp_path))
    with pytest.raises(tally.TallyError) as info:
        licensing.install_key("BCDFG-BCDFG-BCDFG-BCDFG-BCDFG")
    assert info.value.code == 0xC7A10202
    assert info.value.code == tally.KEY_NOT_USABLE
    assert info.value.name == "key_not_usable"
    assert "BCDFG-BCDFG" not in str(info.value)


def test_activation_without_trust_raises_no_trust(tmp_path):
    licensing = tally.Licensing(str(tmp_path))
    licensing.install_key(SERVER_KEY)
    with pytest.raises(tally.TallyError) as info:
        licensing.activate(host="127.0.0.1:9")
    assert info.value.code == tally.NO_TRUST


@needs_host
def test_five_server_installations_the_fifth_is_activated(tmp_path):
    results = []
    for i in range(5):
        licensing = tally.Licensing(str(tmp_path / f"pc{i}"))
        licensing.install_key(SERVER_KEY)
        results.append(licensing.activate(host=HOST, trust=TRUST))
    assert [r.count for r in results] == [1, 2, 3, 4, 5]
    assert [r.activated for r in results] == [False] * 4 + [True]
    assert results[0].code == tally.BELOW_THRESHOLD
    assert results[4].code == 0
    status = licensing.status()
    assert status.licensed is True
    assert status.permanent is False
    assert status.days_left in (179, 180)
    assert status.count == 5
    assert status.last_result == 0
    assert status.validity_end.endswith("Z")
    # A renewal from the same installation does not raise the count (R4).
    assert licensing.activate(host=HOST, trust=TRUST).count == 5


@needs_host
def test_blocking_calls_release_the_gil(tmp_path):
    # Activations from several threads at once, each on its own installation: with the GIL
    # held by a waiting call, the others could not even start their requests.
    licensings = [tally.Licensing(str(tmp_path / f"t{i}")) for i in range(4)]
    for licensing in licensings:
        licensing.install_key(SERVER_KEY)
    answers = [None] * len(licensings)

    def run(i):
        answers[i] = licensings[i].activate(host=HOST, trust=TRUST)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(licensings))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a is not None and a.count > 0 for a in answers)


@needs_host
def test_an_unreachable_host_raises_host_unreachable(tmp_path):
    licensing = tally.Licensing(str(tmp_path))
    licensing.install_key(SERVER_KEY)
    with pytest.raises(tally.TallyError) as info:
        licensing.activate(host="127.0.0.1:1", trust=TRUST)
    assert info.value.code == tally.HOST_UNREACHABLE
