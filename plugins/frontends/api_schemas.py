"""Request and response bodies of the API server (OpenAI's names; LMDeploy's for the session API).

Field constraints reject bad input with a 400 before it reaches the engine; fields a client
leaves out take the server's defaults (``conf/sampling``), so only set fields are passed on.
Unknown fields are refused rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.sampling_params import MAX_LOGPROBS

MAX_N = 16  # completions per prompt
MAX_PROMPTS = 64  # prompts in one /v1/completions request
MAX_STOP = 16  # stop strings per request
SEED_MAX = 2**63 - 1 - MAX_N  # the engine seeds choice i with seed + i (a signed 64-bit int)

NonEmptyStr = Annotated[str, Field(min_length=1)]
TokenId = Annotated[int, Field(ge=0)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingFields(_Body):
    """Decoding fields shared by the chat and text completion requests."""

    model: str | None = Field(None, description="served model name (GET /v1/models); optional")
    max_tokens: int | None = Field(None, ge=1, description="default: sampling.max_new_tokens")
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="-1 or 0 = off")
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: NonEmptyStr | Annotated[list[NonEmptyStr], Field(max_length=MAX_STOP)] | None = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP)] | None = None
    include_stop_str_in_output: bool | None = None
    seed: int | None = Field(None, ge=-(2**63), le=SEED_MAX)
    n: int = Field(1, ge=1, le=MAX_N)
    ignore_eos: bool | None = None
    min_tokens: int | None = Field(None, ge=0)
    skip_special_tokens: bool | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="accepted and ignored")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="wins over max_tokens")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


Prompt = (
    str
    | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
    | Annotated[list[TokenId], Field(min_length=1)]
    | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=MAX_PROMPTS)]
)  # fmt: skip


class CompletionRequest(SamplingFields):
    prompt: Prompt = Field(description="a text, texts, token ids, or lists of token ids")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


class InteractiveRequest(_Body):
    """LMDeploy's session API (``/v1/chat/interactive``).

    With ``interactive_mode`` the server keeps the conversation, so each request sends only the
    new user message; ``stop`` cancels the session's running request; ``interactive_mode=false``
    answers (continuing the conversation, if any) and then ends the session.
    """

    prompt: str | list[ChatMessage] = Field(description="the new user message (or messages)")
    session_id: int = Field(-1, ge=-1, description="-1: a new session id is chosen")
    interactive_mode: bool = False
    stream: bool = False
    stop: bool = Field(False, description="cancel the session's running request")
    request_output_len: int | None = Field(None, ge=0, description="max new tokens; 0 = none")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    temperature: float | None = Field(None, ge=0, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    min_p: float | None = Field(None, ge=0, le=1)
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    seed: int | None = Field(None, ge=-(2**63), le=SEED_MAX)


class InteractiveResponse(BaseModel):
    text: str = Field(description="the answer (a streamed line holds the new text only)")
    tokens: int = Field(description="tokens generated so far")
    input_tokens: int = Field(description="tokens of this request's new prompt")
    history_tokens: int = Field(description="tokens of the conversation before this request")
    finish_reason: str | None = None
    session_id: int


class EncodeRequest(_Body):
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
    do_preprocess: bool = Field(False, description="wrap the text in the chat template first")
    add_bos: bool = True


class EncodeResponse(BaseModel):
    input_ids: list[int] | list[list[int]]
    length: int | list[int]


# ---- responses (documentation; the handlers build plain dicts) -------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "nybble"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: dict | None = None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict | None = None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
