"""The OpenAI request and response shapes, as pydantic models.

These models are the single source of the server's `/openapi.json`: FastAPI derives the schema
from them, so what the schema promises is what the handlers validate and return.

Requests follow the OpenAI API (https://platform.openai.com/docs/api-reference) for the fields a
small local model can honour; lyre's sampling extras (`top_k`, `repetition_penalty`) are
accepted as extra fields, which is how the `openai` client sends them (`extra_body=`). Unknown
fields are rejected with a 400 naming them: a typo must never be silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from lyre.engine import MAX_NEW_TOKENS
from lyre.engine.sampling import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P

# Bounds shared with the scheduler. They keep one request from monopolising the server.
MAX_N = 8
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_SEED = 2**63 - 1
MAX_LOGPROBS = 5  # completions: `logprobs` alternatives per token (OpenAI's limit)
MAX_TOP_LOGPROBS = 20  # chat: `top_logprobs` alternatives per token (OpenAI's limit)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = Field(False, description="Send a last chunk holding `usage` before [DONE].")


MAX_CONSTRAINT_CHARS = 100_000  # a regex or grammar; schemas are bounded by the body size
MAX_CHOICES = 256
MAX_TOOLS = 64

ChoiceList = Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS * 4)]],
                       Field(min_length=1, max_length=MAX_CHOICES)]


class StructuredOutputs(_Strict):
    """vLLM's `structured_outputs` extra: exactly one of these."""

    json_: dict | bool | None = Field(None, alias="json", description="A JSON schema.")
    regex: Annotated[str, Field(min_length=1, max_length=MAX_CONSTRAINT_CHARS)] | None = None
    choice: ChoiceList | None = Field(None, description="The output is exactly one of these strings.")
    grammar: Annotated[str, Field(min_length=1, max_length=MAX_CONSTRAINT_CHARS)] | None = Field(
        None, description="A Lark grammar (llguidance's dialect) or GBNF (rules written `::=`).")


StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Stop = StopText | Annotated[list[StopText], Field(max_length=MAX_STOP)] | None
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]


class _SamplingFields(_Strict):
    """Fields common to both endpoints."""

    model: str = Field(description="The model id, as listed by GET /v1/models.")
    temperature: float | None = Field(
        None, ge=0.0, le=2.0,
        description=f"0 is greedy (so is anything below 1e-5); default {DEFAULT_TEMPERATURE}.",
    )
    top_p: float | None = Field(
        None, gt=0.0, le=1.0, description=f"Nucleus sampling threshold; default {DEFAULT_TOP_P} (off)."
    )
    n: int | None = Field(None, ge=1, le=MAX_N, description="Choices per prompt; default 1.")
    stream: bool | None = Field(False, description="Stream server-sent events ending in `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    stop: Stop = Field(None, description="Up to 4 strings; generation stops before any of them.")
    seed: int | None = Field(
        None, ge=-MAX_SEED, le=MAX_SEED, description="Same seed and parameters, same output."
    )
    presence_penalty: float | None = Field(
        None, ge=-2.0, le=2.0, description="Only 0 is supported; use `repetition_penalty`."
    )
    frequency_penalty: float | None = Field(
        None, ge=-2.0, le=2.0, description="Only 0 is supported; use `repetition_penalty`."
    )
    user: str | None = Field(None, max_length=256, description="Accepted and ignored.")
    # lyre's extras
    top_k: int | None = Field(
        None, ge=0, le=1_000_000,
        description=f"lyre extra: keep the k most likely tokens; 0 is off; default {DEFAULT_TOP_K}.",
    )
    repetition_penalty: float | None = Field(
        None, ge=0.01, le=10.0,
        description="lyre extra (Hugging Face meaning): >1 discourages repeating earlier tokens.",
    )
    # vLLM's constrained-decoding extras: `structured_outputs` (vLLM >= 0.10) and the older
    # guided_* fields it replaced; at most one constraint per request (lyre.serve.structured).
    structured_outputs: StructuredOutputs | None = Field(
        None, description="vLLM extra: constrain the output to one of json / regex / choice / grammar.")
    guided_json: dict | None = Field(None, description="vLLM's older name of structured_outputs.json.")
    guided_regex: Annotated[str, Field(min_length=1, max_length=MAX_CONSTRAINT_CHARS)] | None = Field(
        None, description="vLLM's older name of structured_outputs.regex.")
    guided_choice: ChoiceList | None = Field(None, description="vLLM's older name of structured_outputs.choice.")
    guided_grammar: Annotated[str, Field(min_length=1, max_length=MAX_CONSTRAINT_CHARS)] | None = Field(
        None, description="vLLM's older name of structured_outputs.grammar.")


class CompletionRequest(_SamplingFields):
    """POST /v1/completions"""

    prompt: (
        Annotated[str, Field(max_length=1_000_000)]
        | Annotated[list[Annotated[str, Field(max_length=1_000_000)]], Field(min_length=1, max_length=MAX_N)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=MAX_N)]
    ) = Field(description="Text, a list of texts, token ids, or a list of token id lists.")
    max_tokens: int | None = Field(16, ge=1, le=MAX_NEW_TOKENS, description="New tokens per choice; default 16.")
    echo: bool | None = Field(False, description="Put the prompt in front of the completion.")
    logprobs: int | None = Field(
        None, ge=0, le=MAX_LOGPROBS,
        description="Return the log-probability of each sampled token and of the `logprobs` most "
                    "likely tokens at each step (0..5; 0: the sampled token only).",
    )
    best_of: int | None = Field(None, ge=1, le=MAX_N, description="Only best_of == n is supported.")
    suffix: str | None = Field(None, max_length=0, description="Not supported (insertion); leave unset.")
    logit_bias: dict[str, float] | None = Field(None, description="Not supported; leave unset or empty.")


class TextPart(_Strict):
    type: Literal["text"]
    text: str = Field(max_length=1_000_000)


ToolName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class FunctionCall(_Strict):
    name: ToolName
    arguments: str = Field(max_length=1_000_000, description="The arguments, a JSON object as text.")


class ToolCall(_Strict):
    """A call an assistant message made (in a request's history, or in a response)."""

    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str, Field(max_length=1_000_000)] | list[TextPart] | None = None
    name: str | None = Field(None, max_length=64)
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)] | None = Field(
        None, description="assistant: the calls it made (content may then be null).")
    tool_call_id: str | None = Field(None, max_length=256,
                                     description="tool: the id of the call this is the result of.")

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JSONSchemaFormat(_Strict):
    name: str = Field("response", max_length=64)
    description: str | None = Field(None, max_length=10_000)
    schema_: dict | None = Field(None, alias="schema", description="The JSON Schema of the answer.")
    strict: bool | None = Field(None, description="true: objects allow no properties beyond "
                                                  "theirs (additionalProperties: false).")


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = Field(None, description='With type "json_schema".')


class FunctionDefinition(_Strict):
    name: ToolName
    description: str | None = Field(None, max_length=100_000)
    parameters: dict | None = Field(None, description="A JSON Schema of the arguments object.")
    strict: bool | None = None


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str = Field(max_length=64)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions"""

    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    max_tokens: int | None = Field(
        None, ge=1, le=MAX_NEW_TOKENS,
        description="New tokens per choice; default: until the context is full.",
    )
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS, description="Same as max_tokens.")
    logprobs: bool | None = Field(False, description="Return the log-probability of each token.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS,
        description="With `logprobs: true`: also the 0..20 most likely tokens at each step.",
    )
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ToolDefinition], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description='"auto" (the default with tools), "none", "required" or '
                          '{"type": "function", "function": {"name": ...}}.')
    parallel_tool_calls: bool | None = Field(None, description="false: at most one call per answer.")


# ----------------------------------------------------------------------------------------------
# Responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None = Field(
        None, description="With `logprobs` > 0: per token, the most likely tokens and the sampled "
                          "one, text -> log-probability.")
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class FunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A piece of a streamed call: the first has `id`, `type` and `function.name`, the next
    ones `function.arguments` fragments; all have the call's `index`."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @field_serializer("tool_calls")
    def _tool_calls(self, calls: list[ToolCallDelta] | None):
        # Fields a delta does not carry are left out, as OpenAI streams them: clients that
        # concatenate fragments must not meet a null.
        return None if calls is None else [c.model_dump(exclude_none=True) for c in calls]


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class Capabilities(BaseModel):
    """What a generating model accepts (neither OpenAI's nor vLLM's /v1/models says this;
    Ollama's /api/show lists "capabilities" such as "tools"): every lyre language model takes
    them all, since constrained decoding needs nothing of the model."""

    tools: bool = Field(True, description="chat: `tools`, `tool_choice`, `parallel_tool_calls`.")
    tool_choice: list[str] = ["auto", "none", "required", "function"]
    response_format: list[str] = ["text", "json_object", "json_schema"]
    structured_outputs: list[str] = Field(
        ["json", "regex", "choice", "grammar"],
        description="Keys of the `structured_outputs` extra (chat and completions); the older "
                    "guided_json / guided_regex / guided_choice / guided_grammar fields too.")
    grammar_syntaxes: list[str] = ["lark", "gbnf"]


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lyre"
    context_length: int = Field(description="lyre extra: the model's context in tokens.")
    chat_template: str = Field(description="lyre extra: the prompt template of chat requests.")
    rag: bool = Field(False, description="lyre extra: POST /v1/rag/answer answers from an index "
                                         "(`lyre serve RUN --rag IDX`).")
    tools: list[str] | None = Field(None, description="lyre extra: the tools POST /v1/agent/answer "
                                    "runs for the chat page (`lyre serve RUN --tools ...`).")
    capabilities: Capabilities | None = Field(
        None, description="lyre extra: the structured-output and tool fields this model honours.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok", "draining"]
    model: str
    active: int = Field(description="Choices being generated now.")
    queued: int = Field(description="Requests waiting for a slot.")
    max_batch: int
    max_queue: int
    steps: int = Field(description="Decode steps run since start.")
    generated_tokens: int


# ----------------------------------------------------------------------------------------------
# POST /v1/classify (a classifier run), shaped like OpenAI's embeddings and moderations

MAX_TEXTS = 256  # texts per request: one request must not hold the model for long

Text = Annotated[str, Field(max_length=1 << 20)]


class ClassifyRequest(_Strict):
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS)] = Field(
        description=f"One text, or a list of up to {MAX_TEXTS} texts.")
    model: str | None = Field(None, description="Optional: the served model's id (GET /v1/models).")


class Classification(BaseModel):
    object: Literal["classification"] = "classification"
    index: int
    label: str = Field(description="The most probable label.")
    probability: float = Field(description="Its probability (softmax of the head's logits).")
    probabilities: dict[str, float] = Field(description="Every label's, in the run's label order.")
    tokens: int = Field(description="Tokens the model read.")
    truncated: bool = Field(description="The text was longer than the context and lost its end.")


class ClassifyUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]
    usage: ClassifyUsage


class ClassifierHealth(BaseModel):
    status: Literal["ok", "draining"]
    model: str
    task: Literal["classify"] = "classify"
    labels: list[str]


# ----------------------------------------------------------------------------------------------
# What the routes document besides their 200 response


ERROR_TEXT = {
    400: "Malformed JSON, a parameter out of range, or a prompt longer than the context",
    401: "Missing or wrong API key (only when the server has one)",
    404: "Unknown model",
    408: "The request's headers or body did not arrive in time",
    413: "Request body over the size limit",
    429: "Queue full; retry after the Retry-After header's seconds",
    503: "Server shutting down; retry after the Retry-After header's seconds",
}
GENERATION_ERRORS = (400, 401, 404, 408, 413, 429, 503)


def error_responses(*codes: int) -> dict:
    """OpenAPI `responses` entries for these error statuses, all in OpenAI's error shape."""
    return {code: {"model": ErrorResponse, "description": ERROR_TEXT[code]} for code in codes}


def sse_responses(model: type) -> dict:
    """The 200 of a route that answers JSON, or server-sent events with `stream: true`."""
    return {200: {"model": model, "description": "A JSON body, or with `stream: true` "
                  "server-sent events of chunks ending in `data: [DONE]`",
                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}}
