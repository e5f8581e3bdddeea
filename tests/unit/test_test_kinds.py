"""Every test gets exactly one kind from its directory (tests/conftest.py), and it shows."""

from __future__ import annotations

import pytest

from tests.conftest import FIRST, SHARED_FIXTURE_MODULES, TESTS, kind_of, order_for_workers


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


class FakeItem:
    """What order_for_workers reads of a collected test: its module's path, node id, markers."""

    def __init__(self, nodeid: str, slow: bool = False) -> None:
        self.nodeid = nodeid
        self.path = TESTS.parent / nodeid.split("::", 1)[0]
        self.marks = ["slow"] if slow else []
        self.groups: list[str] = []

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.marks else None

    def add_marker(self, mark: pytest.MarkDecorator) -> None:
        assert mark.name == "xdist_group"
        self.groups.append(str(mark.args[0]))


def test_workers_get_the_longest_test_first_then_slow_modules_each_module_together() -> None:
    items = [FakeItem("tests/unit/test_a.py::t1"), FakeItem("tests/unit/test_b.py::t1"),
             FakeItem("tests/unit/test_b.py::t2", slow=True), FakeItem("tests/unit/test_c.py::t1"),
             FakeItem(FIRST, slow=True), FakeItem("tests/unit/test_b.py::t3"),
             FakeItem(f"{SHARED_FIXTURE_MODULES[0]}::t1")]
    order_for_workers(items)  # type: ignore[arg-type]
    assert [i.nodeid for i in items] == [
        FIRST, "tests/unit/test_b.py::t1", "tests/unit/test_b.py::t2", "tests/unit/test_b.py::t3",
        "tests/unit/test_a.py::t1", "tests/unit/test_c.py::t1", f"{SHARED_FIXTURE_MODULES[0]}::t1"]
    assert [(i.nodeid, i.groups) for i in items if i.groups] == [
        (f"{SHARED_FIXTURE_MODULES[0]}::t1", [SHARED_FIXTURE_MODULES[0]])]
