"""InternLM's plugin: the architecture and the internlm-chat template."""

from __future__ import annotations

from core.hookspecs import hookimpl


@hookimpl
def register_models(register):
    from plugins.models.internlm.model import InternLMForCausalLM

    register("InternLMForCausalLM", InternLMForCausalLM)


@hookimpl
def register_chat_templates(register):
    from plugins.models.internlm.chat_template import INTERNLM_CHAT

    register(INTERNLM_CHAT.name, INTERNLM_CHAT)
