"""The shared registry: names register once, only names the schema allows, clear lookup errors."""

from __future__ import annotations

import pytest

from tasks.registry import Registry


def test_register_lookup_and_refusals():
    reg: Registry[int] = Registry("widget", allowed=("a", "b"))
    reg.register("a")(1)
    assert reg["a"] == 1 and list(reg) == ["a"] and len(reg) == 1 and "b" not in reg
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a")(2)
    with pytest.raises(ValueError, match=r"widget 'c' is not allowed by the config schema \(allowed: a, b\)"):
        reg.register("c")
    with pytest.raises(KeyError, match=r"no widget named 'b' \(registered: a\)"):
        reg["b"]
    assert reg.get("b") is None
