"""The gradio web chat: ``nybble frontend=gradio`` (conf/frontend/gradio.yaml).

One page: the model's name, the conversation (answers stream in as they are generated), a
message box with Send, Stop and Reset, and the sampling settings with the system prompt. Each
browser tab is its own session (an id in ``gr.State``); answers come from the in-process engine,
or from a running ``nybble frontend=api`` server when ``frontend.server_url`` is set
(plugins/frontends/gradio_backend.py). As many answers run at once as the engine has batch slots;
further users wait in gradio's queue. A turn that fails shows its reason under the conversation.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import gradio as gr

from plugins.frontends.gradio_backend import BackendError, ChatBackend, Settings, make_backend
from plugins.frontends.gradio_turns import BusyError, Turns, until_stopped

log = logging.getLogger(__name__)

TOP_K_MAX = 200  # the slider's range; 0 = off
STOPPED = "stopped: the answer so far stays in the conversation"


def _text(content: Any) -> str:
    """A chatbot message's text: gradio hands content back as a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _history(chatbot: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": _text(m.get("content"))} for m in chatbot or []]


def build_ui(
    backend: ChatBackend,
    *,
    session_len: int,
    defaults: Any,
    concurrency: int,
    title: str = "nybble",
) -> gr.Blocks:
    """The page on ``backend``; ``defaults`` are the sampling defaults (``cfg.sampling``);
    ``concurrency`` is how many answers run at once (the engine's batch slots)."""
    turns = Turns()
    ending: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    def end_session(session_id: str | None) -> None:
        """Gradio's callback when a closed tab's state expires (an hour later)."""
        if session_id is None:
            return
        try:
            task = asyncio.get_running_loop().create_task(backend.end(session_id))
        except RuntimeError:  # called outside the server's event loop
            asyncio.run(backend.end(session_id))
            return
        ending.add(task)
        task.add_done_callback(ending.discard)

    with gr.Blocks(title=title, analytics_enabled=False, fill_height=True) as demo:
        session = gr.State(lambda: uuid.uuid4().hex, delete_callback=end_session)
        header = gr.Markdown(f"## {title}", elem_id="model-name")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                chatbot = gr.Chatbot(
                    elem_id="chatbot", label="conversation", height=460, buttons=["copy"]
                )
                status = gr.Markdown("", elem_id="status")
                message = gr.Textbox(
                    elem_id="message", placeholder="Type a message, Enter sends",
                    show_label=False, lines=1, max_lines=8, autofocus=True,
                )  # fmt: skip
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    reset = gr.Button("Reset", elem_id="reset")
            with gr.Column(scale=1, min_width=260):
                max_new_tokens = gr.Slider(
                    1, session_len, value=defaults.max_new_tokens, step=1,
                    label="max new tokens", elem_id="max-new-tokens",
                )  # fmt: skip
                temperature = gr.Slider(
                    0.0, 2.0, value=defaults.temperature, step=0.05,
                    label="temperature (0 = greedy)", elem_id="temperature",
                )  # fmt: skip
                top_p = gr.Slider(
                    0.01, 1.0, value=defaults.top_p, step=0.01, label="top_p", elem_id="top-p"
                )
                top_k = gr.Slider(
                    0, TOP_K_MAX, value=max(defaults.top_k, 0), step=1,
                    label="top_k (0 = off)", elem_id="top-k",
                )  # fmt: skip
                repetition_penalty = gr.Slider(
                    0.5, 2.0, value=defaults.repetition_penalty, step=0.01,
                    label="repetition penalty (1 = off)", elem_id="repetition-penalty",
                )  # fmt: skip
                system_prompt = gr.Textbox(
                    "", lines=4, label="system prompt", elem_id="system-prompt",
                    placeholder="empty: the model's default",
                )  # fmt: skip
        controls = [max_new_tokens, temperature, top_p, top_k, repetition_penalty, system_prompt]

        async def describe() -> str:
            return f"## {title} · {await backend.describe()}"

        async def respond(text, chatbot_value, session_id, max_new, temp, p, k, rep, system):
            """Stream the answer to ``text`` into the conversation."""
            history = _history(chatbot_value)
            if not text.strip():
                yield text, history, ""
                return
            try:
                turn = turns.begin(session_id)
            except BusyError:
                yield text, history, "An answer is still running: Stop it first."
                return
            settings = Settings(int(max_new), float(temp), float(p), int(k), float(rep), system)
            shown = [*history, {"role": "user", "content": text}]
            answer = {"role": "assistant", "content": ""}
            yield "", shown, "generating…"
            try:
                deltas = backend.stream(session_id, history, text, settings)
                async for delta in until_stopped(deltas, turn.stop):
                    if turn.discarded:
                        break
                    answer["content"] += delta
                    yield gr.skip(), [*shown, answer], gr.skip()
            except BackendError as e:
                yield text, history, f"⚠️ {e}"
                return
            except Exception as e:  # the page gets one line; the server log the traceback
                log.exception("the gradio chat turn failed")
                yield text, history, f"⚠️ internal error: {type(e).__name__}: {e}"
                return
            finally:
                turns.finish(session_id, turn)
            if turn.discarded:  # Reset cleared the page meanwhile
                return
            yield gr.skip(), [*shown, answer], STOPPED if turn.stop.is_set() else ""

        async def on_stop(session_id):
            turns.stop(session_id)

        async def on_reset(session_id):
            turns.stop(session_id, discard=True)
            await backend.end(session_id)
            return [], "", "new conversation"

        chat_inputs = [message, chatbot, session, *controls]
        chat_outputs = [message, chatbot, status]
        for trigger in (message.submit, send.click):
            trigger(respond, chat_inputs, chat_outputs, concurrency_limit=concurrency,
                    concurrency_id="chat", show_progress="hidden")  # fmt: skip
        # Stop and Reset must not wait behind queued answers
        stop.click(on_stop, [session], None, queue=False)
        reset.click(on_reset, [session], [chatbot, message, status], queue=False)
        # the chatbot's own trash icon clears the page: end the session with it
        chatbot.clear(on_reset, [session], [chatbot, message, status], queue=False)
        demo.load(describe, None, header, queue=False)
    return demo


def launch(llm: Any, cfg: Any, *, block: bool = True) -> gr.Blocks:
    """Serve the page at ``cfg.frontend.host:port`` until interrupted (``block=False`` returns
    the running app, for tests). ``llm`` may be None when ``cfg.frontend.server_url`` is set."""
    fe = cfg.frontend
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request to gradio or the API
    backend = make_backend(llm, fe.server_url, api_key=next(iter(fe.api_keys), None))
    session_len = llm.engine.session_len if llm is not None else cfg.model.session_len
    slots = cfg.engine.max_batch_size
    demo = build_ui(backend, session_len=session_len, defaults=cfg.sampling, concurrency=slots)
    demo.queue(default_concurrency_limit=slots, max_size=fe.max_queued_requests)
    source = f"the API server at {fe.server_url}" if fe.server_url else cfg.model.name
    print(f"nybble gradio · answers from {source} · {slots} at once", flush=True)
    demo.launch(
        server_name=fe.host,
        server_port=fe.port,
        share=fe.share,
        prevent_thread_lock=not block,
        show_error=False,
        ssr_mode=False,
        footer_links=[],
    )
    return demo
