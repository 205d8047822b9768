"""Every call of the `tally` package against a real host and a real authority.

Run by crates/tally-cli/tests/integration/embedding_api.rs, which starts `tally host run --dev`
and `tally authority run` and sets TALLY_TEST_HOST, TALLY_TEST_TRUST (the host's authority.pub),
TALLY_TEST_SERVER_KEY, TALLY_TEST_AUTHORITY (URL), TALLY_TEST_AUTHORITY_TRUST,
TALLY_TEST_AUTHORITY_DIR, TALLY_TEST_MAK, TALLY_TEST_MAK_EDITION_KEY, TALLY_TEST_SILENT_HOST (accepts, never answers) and
TALLY_TEST_BIN (the `tally` binary, for `tally authority confirm`). Without them the module is
skipped (the older test_licensing.py run needs only a host).
"""

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

import tally

ENV = os.environ
pytestmark = pytest.mark.skipif(
    "TALLY_TEST_AUTHORITY" not in ENV, reason="TALLY_TEST_AUTHORITY not set"
)


def test_constants_names_reprs_and_stubs(tmp_path):
    assert tally.OK == 0
    assert tally.HOST_REVOKED == 0xC7A1000A
    assert tally.result_name(0) == "success"
    assert tally.result_name(tally.HOST_REVOKED) == "host_revoked"
    assert tally.result_name(0x1234) == "unknown"
    status = tally.Licensing(str(tmp_path)).status()
    text = repr(status)
    assert "Some(" not in text and "edition=None" in text, text
    assert text.startswith("Status(state='unlicensed'"), text
    assert status.revoked is None
    assert status.revocation_serial == 0
    assert repr(tally.Licensing(str(tmp_path))) == f"Licensing('{tmp_path}')"
    package = Path(tally.__file__).parent
    assert (package / "py.typed").exists(), list(package.iterdir())
    assert any(p.suffix == ".pyi" for p in package.iterdir()), list(package.iterdir())


def test_setup_key_host_status_times_generalize_wait_uninstall(tmp_path):
    lines = []
    lic = tally.Licensing(str(tmp_path / "setup"), timeout=20)
    lic.set_log_callback(lambda level, message: lines.append((level, message)), "trace")
    with pytest.raises(ValueError):
        lic.set_log_callback(None, "loud")
    lic.install_key(ENV["TALLY_TEST_SERVER_KEY"])
    with pytest.raises(tally.TallyError) as info:
        lic.set_host("two words")
    assert info.value.code == tally.INVALID_ARGUMENT
    lic.set_host(ENV["TALLY_TEST_HOST"])
    a = lic.activate(trust=ENV["TALLY_TEST_TRUST"])
    assert (a.activated, a.count, a.threshold, a.code) == (False, 1, 5, tally.BELOW_THRESHOLD)
    assert repr(a).startswith("Activation(activated=False, count=1, threshold=5, code=0x47A10001")
    s = lic.status()
    assert s.state == "initial grace"
    assert len(s.cmid) == 36
    assert s.grace_end.endswith("Z") and s.next_attempt.endswith("Z")
    assert s.validity_end is None
    lic.clear_host()

    # This call's own deadline, at a host that accepts and never answers.
    start = time.monotonic()
    with pytest.raises(tally.TallyError) as info:
        lic.activate(host=ENV["TALLY_TEST_SILENT_HOST"], trust=ENV["TALLY_TEST_TRUST"], timeout=0.4)
    assert info.value.code == tally.HOST_TIMEOUT
    assert time.monotonic() - start < 5
    with pytest.raises(ValueError):
        lic.activate(timeout=-1)

    # A change made by another thread wakes the waiting one; no change: None.
    assert lic.wait_for_change(known=s, timeout=0.3) is None
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(lic.wait_for_change(known=s, timeout=10)))
    waiter.start()
    lic.generalize()
    waiter.join()
    assert woke[0] is not None and woke[0].cmid != s.cmid
    lic.rearm()
    lic.uninstall_key()
    assert lic.status().state == "unlicensed"
    lic.set_timeout(0)


def test_mak_online_needs_the_authority_url_then_is_permanent(tmp_path):
    lines = []
    lic = tally.Licensing(str(tmp_path / "mak"))
    lic.set_log_callback(lambda level, message: lines.append((level, message)), "trace")
    lic.install_key(ENV["TALLY_TEST_MAK_EDITION_KEY"])  # names the edition (R25)
    lic.install_key(ENV["TALLY_TEST_MAK"])
    trust = ENV["TALLY_TEST_AUTHORITY_TRUST"]
    with pytest.raises(tally.TallyError) as info:
        lic.activate(trust=trust)
    assert info.value.code == tally.NO_HOST
    assert "authority URL" in info.value.message
    assert "--authority" not in info.value.message.split(";")[0]
    a = lic.activate(authority=ENV["TALLY_TEST_AUTHORITY"], trust=trust, timeout=10)
    assert a.activated and a.code == tally.OK
    s = lic.status()
    assert s.licensed and s.permanent and s.validity_end is None
    assert lines, "the log callback received nothing"
    assert all(level in ("error", "warn", "info", "debug", "trace") for level, _ in lines)


def test_mak_offline_installation_id_out_confirmation_in(tmp_path):
    state = tmp_path / "offline"
    state.mkdir()
    shutil.copy(ENV["TALLY_TEST_AUTHORITY_TRUST"], state / "authority.pub")
    lic = tally.Licensing(str(state))
    with pytest.raises(tally.TallyError) as info:
        lic.installation_id()
    assert info.value.code == tally.KEY_NOT_USABLE
    lic.install_key(ENV["TALLY_TEST_MAK_EDITION_KEY"])
    lic.install_key(ENV["TALLY_TEST_MAK"])
    iid = lic.installation_id()
    out = subprocess.run(
        [ENV["TALLY_TEST_BIN"], "authority", "confirm", "--dir", ENV["TALLY_TEST_AUTHORITY_DIR"],
         iid, "--json"],
        capture_output=True, text=True, check=True,
    )
    confirmation = json.loads(out.stdout)["confirmation_id"]
    with pytest.raises(tally.TallyError) as info:
        lic.confirm("12345 67890")
    assert info.value.code == tally.KEY_NOT_USABLE
    lic.confirm(confirmation)
    s = lic.status()
    assert s.licensed and s.permanent
