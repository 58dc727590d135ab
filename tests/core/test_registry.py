import pytest

from madcache.core.errors import UnknownNameError
from madcache.core.registry import Registry


def test_unknown_name_lists_valid_ones():
    reg: Registry[int] = Registry("teacher")
    reg.register("b", 2)
    reg.register("a", 1)
    with pytest.raises(UnknownNameError) as err:
        reg.get("c")
    assert str(err.value) == "unknown teacher 'c'. Available: a, b"
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"]


def test_duplicate_registration_warns_and_later_wins():
    reg: Registry[int] = Registry("student")
    reg.register("x", 1)
    with pytest.warns(UserWarning, match="registered twice"):
        reg.register("x", 2)
    assert reg.get("x") == 2 and "x" in reg


def test_decorator_registers_and_returns_entry():
    reg: Registry[object] = Registry("method")

    @reg.decorator("f")
    def f():
        return 1

    assert reg.get("f") is f
