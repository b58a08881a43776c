"""`pytest -m "not servers"` starts no server: tests using a server fixture are marked at
collection (tests/conftest.py), and a server started from an unmarked test is refused."""

from __future__ import annotations

import sys

import pytest

from tests.servers import ManagedProcess


def test_an_unmarked_test_cannot_start_a_server(tmp_path):
    proc = ManagedProcess([sys.executable, "-c", "pass"], log_path=tmp_path / "x.log", name="example")
    with pytest.raises(RuntimeError) as err:
        proc.start()
    assert str(err.value).startswith("tests/unit/test_markers.py::test_an_unmarked_test_cannot_start_a_server starts "
                                     "the example server but is not marked `servers`")
    assert proc.proc is None  # refused before anything started


def test_every_collected_user_of_a_server_fixture_is_marked(request):
    """Over the whole session's collection (vacuous when this file runs alone)."""
    from tests.conftest import SERVER_FIXTURES

    unmarked = [item.nodeid for item in request.session.items
                if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("servers")]
    assert unmarked == []



def test_the_unit_directory_starts_no_server(request):
    """tests/unit holds the modules that need no server; a test there that uses one belongs in
    tests/integration (over the whole session's collection, like the test above)."""
    misplaced = [item.nodeid for item in request.session.items
                 if item.nodeid.startswith("tests/unit/") and item.get_closest_marker("servers")]
    assert misplaced == []
