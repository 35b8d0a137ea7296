"""The internlm-chat template (internlm-chat-7b / -20b and their 4-bit builds), as LMDeploy
serves them: see shared/data/internlm/README.md, "Chat template"."""

from __future__ import annotations

from core.chat_template import ChatTemplate

# InternLM's published default system prompt; it ends with a newline, and the template adds
# another (eosys) before the first user message.
INTERNLM_META_INSTRUCTION = """\
You are an AI assistant whose name is InternLM (书生·浦语).
- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI \
Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.
- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the user \
such as English and 中文.
"""

EOA_TOKEN_ID = 103028  # <eoa>
EOS_TOKEN_ID = 2  # </s>

INTERNLM_CHAT = ChatTemplate(
    name="internlm-chat",
    bos="<s>",
    system="<|System|>:",
    eosys="\n",
    user="<|User|>:",
    eoh="\n",
    assistant="<|Bot|>:",
    eoa="<eoa>",
    separator="\n",
    meta_instruction=INTERNLM_META_INSTRUCTION,
    stop_words=("<eoa>",),
    stop_token_ids=(EOA_TOKEN_ID, EOS_TOKEN_ID),
)
