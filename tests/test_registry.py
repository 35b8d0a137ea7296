"""core/registry.py: names are unique, and a wrong name tells the user the right ones."""

from __future__ import annotations

import pytest

from core.plugins import get_registries
from core.registry import Registry, RegistryError


def test_duplicate_name_raises_naming_both_owners():
    reg = Registry("frontend")
    reg.add("chat", object(), owner="plugins.frontends.plugin")
    with pytest.raises(RegistryError) as err:
        reg.add("chat", object(), owner="my_plugin")
    message = str(err.value)
    assert "frontend 'chat' is registered twice" in message
    assert "plugins.frontends.plugin" in message and "my_plugin" in message


def test_duplicate_keeps_the_first_item():
    reg = Registry("weight format")
    first = object()
    reg.add("awq", first, owner="a")
    with pytest.raises(RegistryError):
        reg.add("awq", object(), owner="b")
    assert reg.get("awq") is first and reg.owner("awq") == "a"


def test_unknown_name_lists_the_known_ones():
    reg = Registry("frontend")
    for name in ("gradio", "api", "chat"):
        reg.add(name, object())
    with pytest.raises(RegistryError) as err:
        reg.get("grpc")
    # plain text, not KeyError's quoted repr
    assert str(err.value) == "unknown frontend 'grpc'; known: api, chat, gradio"


def test_unknown_name_in_an_empty_registry():
    with pytest.raises(RegistryError, match=r"unknown kernel 'x'; known: \(none registered\)"):
        Registry("kernel").get("x")


@pytest.mark.parametrize("name", ["", None, 3])
def test_names_must_be_non_empty_strings(name):
    with pytest.raises(RegistryError, match="non-empty strings"):
        Registry("model architecture").add(name, object())


def test_names_are_listed_sorted():
    reg = Registry("frontend")
    for name in ("triton", "api", "chat"):
        reg.add(name, object())
    assert reg.names() == list(reg) == ["api", "chat", "triton"]
    assert len(reg) == 3 and "api" in reg and "grpc" not in reg


def test_builtin_plugins_fill_the_registries():
    regs = get_registries()
    assert {"api", "chat", "gradio", "triton"} <= set(regs.frontends.names())
    assert {"none", "awq"} <= set(regs.weight_formats.names())
    assert "InternLMForCausalLM" in regs.models
    assert "internlm-chat" in regs.chat_templates
    assert regs.frontends.owner("chat") == "plugins.frontends.plugin"
