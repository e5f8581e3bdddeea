"""Every test gets exactly one kind from its directory (tests/conftest.py), and it shows."""

from __future__ import annotations

import pytest

from tests.conftest import TESTS, kind_of


@pytest.mark.parametrize(("relative", "kind"), [
    ("unit/test_store.py", ("unit", False)),
    ("integration/test_mqtt_sink.py", ("integration", False)),
    ("e2e/test_demo.py", ("integration", True)),
    ("packaging/test_wheel.py", ("integration", False)),
    ("test_stray.py", (None, False)),
    ("servicefixtures.py", (None, False)),
])
def test_the_directory_gives_the_kind(relative: str, kind: tuple[str | None, bool]) -> None:
    assert kind_of(TESTS / relative) == kind


def test_a_path_outside_the_tests_has_no_kind() -> None:
    assert kind_of(TESTS.parent / "gateway" / "store.py") == (None, False)


def test_this_test_is_marked_unit(request: pytest.FixtureRequest) -> None:
    marks = {m.name for m in request.node.iter_markers()}
    assert "unit" in marks and "integration" not in marks and "slow" not in marks
