from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_SYSTEM: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]
    ROLE_TOOL: _ClassVar[Role]

class ReasoningEffort(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASONING_EFFORT_UNSPECIFIED: _ClassVar[ReasoningEffort]
    REASONING_EFFORT_NONE: _ClassVar[ReasoningEffort]
    REASONING_EFFORT_MINIMAL: _ClassVar[ReasoningEffort]
    REASONING_EFFORT_LOW: _ClassVar[ReasoningEffort]
    REASONING_EFFORT_MEDIUM: _ClassVar[ReasoningEffort]
    REASONING_EFFORT_HIGH: _ClassVar[ReasoningEffort]
    REASONING_EFFORT_XHIGH: _ClassVar[ReasoningEffort]
    REASONING_EFFORT_MAX: _ClassVar[ReasoningEffort]

class PartType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PART_TYPE_UNSPECIFIED: _ClassVar[PartType]
    PART_TYPE_TEXT: _ClassVar[PartType]
    PART_TYPE_IMAGE: _ClassVar[PartType]

class StatusState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_STATE_UNSPECIFIED: _ClassVar[StatusState]
    STATUS_STATE_QUEUED: _ClassVar[StatusState]
    STATUS_STATE_STREAMING: _ClassVar[StatusState]
    STATUS_STATE_RETRYING: _ClassVar[StatusState]
    STATUS_STATE_FAILOVER: _ClassVar[StatusState]
    STATUS_STATE_CACHED: _ClassVar[StatusState]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_TOOL_CALLS: _ClassVar[FinishReason]
    FINISH_REASON_CONTENT_FILTER: _ClassVar[FinishReason]
    FINISH_REASON_OTHER: _ClassVar[FinishReason]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_RATE_LIMIT: _ClassVar[ErrorCode]
    ERROR_CODE_AUTH_FAILED: _ClassVar[ErrorCode]
    ERROR_CODE_FORBIDDEN: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_REQUEST: _ClassVar[ErrorCode]
    ERROR_CODE_CONTEXT_LENGTH_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_MODEL_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_CONTENT_FILTERED: _ClassVar[ErrorCode]
    ERROR_CODE_OVERLOADED: _ClassVar[ErrorCode]
    ERROR_CODE_PROVIDER_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_TIMEOUT: _ClassVar[ErrorCode]
    ERROR_CODE_CANCELLED: _ClassVar[ErrorCode]
    ERROR_CODE_BUDGET_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
ROLE_UNSPECIFIED: Role
ROLE_SYSTEM: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role
ROLE_TOOL: Role
REASONING_EFFORT_UNSPECIFIED: ReasoningEffort
REASONING_EFFORT_NONE: ReasoningEffort
REASONING_EFFORT_MINIMAL: ReasoningEffort
REASONING_EFFORT_LOW: ReasoningEffort
REASONING_EFFORT_MEDIUM: ReasoningEffort
REASONING_EFFORT_HIGH: ReasoningEffort
REASONING_EFFORT_XHIGH: ReasoningEffort
REASONING_EFFORT_MAX: ReasoningEffort
PART_TYPE_UNSPECIFIED: PartType
PART_TYPE_TEXT: PartType
PART_TYPE_IMAGE: PartType
STATUS_STATE_UNSPECIFIED: StatusState
STATUS_STATE_QUEUED: StatusState
STATUS_STATE_STREAMING: StatusState
STATUS_STATE_RETRYING: StatusState
STATUS_STATE_FAILOVER: StatusState
STATUS_STATE_CACHED: StatusState
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_TOOL_CALLS: FinishReason
FINISH_REASON_CONTENT_FILTER: FinishReason
FINISH_REASON_OTHER: FinishReason
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_RATE_LIMIT: ErrorCode
ERROR_CODE_AUTH_FAILED: ErrorCode
ERROR_CODE_FORBIDDEN: ErrorCode
ERROR_CODE_INVALID_REQUEST: ErrorCode
ERROR_CODE_CONTEXT_LENGTH_EXCEEDED: ErrorCode
ERROR_CODE_MODEL_NOT_FOUND: ErrorCode
ERROR_CODE_CONTENT_FILTERED: ErrorCode
ERROR_CODE_OVERLOADED: ErrorCode
ERROR_CODE_PROVIDER_UNAVAILABLE: ErrorCode
ERROR_CODE_TIMEOUT: ErrorCode
ERROR_CODE_CANCELLED: ErrorCode
ERROR_CODE_BUDGET_EXCEEDED: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode

class Frame(_message.Message):
    __slots__ = ("completion_request", "status", "token", "reasoning", "tool_call", "usage", "done", "error", "provider_info", "hello", "cancel", "query", "answer", "more")
    COMPLETION_REQUEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_INFO_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    completion_request: CompletionRequest
    status: Status
    token: Token
    reasoning: Reasoning
    tool_call: ToolCallEvent
    usage: Usage
    done: Done
    error: Error
    provider_info: ProviderInfo
    hello: Hello
    cancel: Cancel
    query: Query
    answer: Answer
    more: _containers.RepeatedCompositeFieldContainer[Frame]
    def __init__(self, completion_request: _Optional[_Union[CompletionRequest, _Mapping]] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., token: _Optional[_Union[Token, _Mapping]] = ..., reasoning: _Optional[_Union[Reasoning, _Mapping]] = ..., tool_call: _Optional[_Union[ToolCallEvent, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., provider_info: _Optional[_Union[ProviderInfo, _Mapping]] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., query: _Optional[_Union[Query, _Mapping]] = ..., answer: _Optional[_Union[Answer, _Mapping]] = ..., more: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ...) -> None: ...

class ClientFrame(_message.Message):
    __slots__ = ("completion_request", "error", "hello", "cancel", "query")
    COMPLETION_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    completion_request: CompletionRequest
    error: Error
    hello: Hello
    cancel: Cancel
    query: Query
    def __init__(self, completion_request: _Optional[_Union[CompletionRequest, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., query: _Optional[_Union[Query, _Mapping]] = ...) -> None: ...

class ServerFrame(_message.Message):
    __slots__ = ("status", "token", "reasoning", "tool_call", "usage", "done", "error", "provider_info", "hello", "answer", "more")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_INFO_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    status: Status
    token: Token
    reasoning: Reasoning
    tool_call: ToolCallEvent
    usage: Usage
    done: Done
    error: Error
    provider_info: ProviderInfo
    hello: Hello
    answer: Answer
    more: _containers.RepeatedCompositeFieldContainer[ServerFrame]
    def __init__(self, status: _Optional[_Union[Status, _Mapping]] = ..., token: _Optional[_Union[Token, _Mapping]] = ..., reasoning: _Optional[_Union[Reasoning, _Mapping]] = ..., tool_call: _Optional[_Union[ToolCallEvent, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., provider_info: _Optional[_Union[ProviderInfo, _Mapping]] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., answer: _Optional[_Union[Answer, _Mapping]] = ..., more: _Optional[_Iterable[_Union[ServerFrame, _Mapping]]] = ...) -> None: ...

class StreamEvent(_message.Message):
    __slots__ = ("status", "token", "reasoning", "tool_call", "usage", "done", "error")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    status: Status
    token: Token
    reasoning: Reasoning
    tool_call: ToolCallEvent
    usage: Usage
    done: Done
    error: Error
    def __init__(self, status: _Optional[_Union[Status, _Mapping]] = ..., token: _Optional[_Union[Token, _Mapping]] = ..., reasoning: _Optional[_Union[Reasoning, _Mapping]] = ..., tool_call: _Optional[_Union[ToolCallEvent, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class CompletionResult(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[StreamEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[StreamEvent, _Mapping]]] = ...) -> None: ...

class ListProvidersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProvidersResponse(_message.Message):
    __slots__ = ("providers",)
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedCompositeFieldContainer[ProviderInfo]
    def __init__(self, providers: _Optional[_Iterable[_Union[ProviderInfo, _Mapping]]] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("id", "name", "arguments")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    arguments: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., arguments: _Optional[str] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content", "images", "tool_calls", "tool_call_id", "name", "provider_data_json", "cache_point", "parts", "tool_error", "cache_ttl")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    CACHE_POINT_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    TOOL_ERROR_FIELD_NUMBER: _ClassVar[int]
    CACHE_TTL_FIELD_NUMBER: _ClassVar[int]
    role: Role
    content: str
    images: _containers.RepeatedScalarFieldContainer[str]
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    tool_call_id: str
    name: str
    provider_data_json: str
    cache_point: bool
    parts: _containers.RepeatedCompositeFieldContainer[ContentPart]
    tool_error: bool
    cache_ttl: str
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., content: _Optional[str] = ..., images: _Optional[_Iterable[str]] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., tool_call_id: _Optional[str] = ..., name: _Optional[str] = ..., provider_data_json: _Optional[str] = ..., cache_point: _Optional[bool] = ..., parts: _Optional[_Iterable[_Union[ContentPart, _Mapping]]] = ..., tool_error: _Optional[bool] = ..., cache_ttl: _Optional[str] = ...) -> None: ...

class ContentPart(_message.Message):
    __slots__ = ("type", "text", "url")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    type: PartType
    text: str
    url: str
    def __init__(self, type: _Optional[_Union[PartType, str]] = ..., text: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class Tool(_message.Message):
    __slots__ = ("name", "description", "parameters_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters_json: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters_json: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "context_window", "max_tokens", "supports_streaming", "supports_functions", "supports_vision", "cost_per_1k_input", "cost_per_1k_output", "cost_per_1k_cached_input", "cost_per_1k_cache_write_input", "cost_per_1k_cache_write_1h_input")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_STREAMING_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_VISION_FIELD_NUMBER: _ClassVar[int]
    COST_PER_1K_INPUT_FIELD_NUMBER: _ClassVar[int]
    COST_PER_1K_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    COST_PER_1K_CACHED_INPUT_FIELD_NUMBER: _ClassVar[int]
    COST_PER_1K_CACHE_WRITE_INPUT_FIELD_NUMBER: _ClassVar[int]
    COST_PER_1K_CACHE_WRITE_1H_INPUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    context_window: int
    max_tokens: int
    supports_streaming: bool
    supports_functions: bool
    supports_vision: bool
    cost_per_1k_input: float
    cost_per_1k_output: float
    cost_per_1k_cached_input: float
    cost_per_1k_cache_write_input: float
    cost_per_1k_cache_write_1h_input: float
    def __init__(self, name: _Optional[str] = ..., context_window: _Optional[int] = ..., max_tokens: _Optional[int] = ..., supports_streaming: _Optional[bool] = ..., supports_functions: _Optional[bool] = ..., supports_vision: _Optional[bool] = ..., cost_per_1k_input: _Optional[float] = ..., cost_per_1k_output: _Optional[float] = ..., cost_per_1k_cached_input: _Optional[float] = ..., cost_per_1k_cache_write_input: _Optional[float] = ..., cost_per_1k_cache_write_1h_input: _Optional[float] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class ToolList(_message.Message):
    __slots__ = ("tools",)
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    def __init__(self, tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ...) -> None: ...

class CompletionRequest(_message.Message):
    __slots__ = ("session_id", "model", "messages", "provider", "stream", "max_tokens", "temperature", "top_p", "stop", "tools", "tool_choice_mode", "tool_choice_json", "response_format_json", "providers", "metadata_json", "reasoning", "cache", "reasoning_effort", "reasoning_budget")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_MODE_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_JSON_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_JSON_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    REASONING_EFFORT_FIELD_NUMBER: _ClassVar[int]
    REASONING_BUDGET_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    provider: str
    stream: bool
    max_tokens: int
    temperature: float
    top_p: float
    stop: StringList
    tools: ToolList
    tool_choice_mode: str
    tool_choice_json: str
    response_format_json: str
    providers: StringList
    metadata_json: str
    reasoning: bool
    cache: bool
    reasoning_effort: ReasoningEffort
    reasoning_budget: int
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., provider: _Optional[str] = ..., stream: _Optional[bool] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., stop: _Optional[_Union[StringList, _Mapping]] = ..., tools: _Optional[_Union[ToolList, _Mapping]] = ..., tool_choice_mode: _Optional[str] = ..., tool_choice_json: _Optional[str] = ..., response_format_json: _Optional[str] = ..., providers: _Optional[_Union[StringList, _Mapping]] = ..., metadata_json: _Optional[str] = ..., reasoning: _Optional[bool] = ..., cache: _Optional[bool] = ..., reasoning_effort: _Optional[_Union[ReasoningEffort, str]] = ..., reasoning_budget: _Optional[int] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("session_id", "state", "from_provider", "to_provider", "reason", "attempt", "tokens_in", "cached_tokens_in", "cache_write_tokens_in", "cache_write_1h_tokens_in", "peer_state")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FROM_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    TO_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_1H_TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    PEER_STATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: StatusState
    from_provider: str
    to_provider: str
    reason: str
    attempt: int
    tokens_in: int
    cached_tokens_in: int
    cache_write_tokens_in: int
    cache_write_1h_tokens_in: int
    peer_state: str
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[_Union[StatusState, str]] = ..., from_provider: _Optional[str] = ..., to_provider: _Optional[str] = ..., reason: _Optional[str] = ..., attempt: _Optional[int] = ..., tokens_in: _Optional[int] = ..., cached_tokens_in: _Optional[int] = ..., cache_write_tokens_in: _Optional[int] = ..., cache_write_1h_tokens_in: _Optional[int] = ..., peer_state: _Optional[str] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("session_id", "text")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    text: str
    def __init__(self, session_id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class Reasoning(_message.Message):
    __slots__ = ("session_id", "text", "signature", "redacted")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    REDACTED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    text: str
    signature: str
    redacted: str
    def __init__(self, session_id: _Optional[str] = ..., text: _Optional[str] = ..., signature: _Optional[str] = ..., redacted: _Optional[str] = ...) -> None: ...

class ToolCallEvent(_message.Message):
    __slots__ = ("session_id", "function")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    function: ToolCall
    def __init__(self, session_id: _Optional[str] = ..., function: _Optional[_Union[ToolCall, _Mapping]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("session_id", "tokens_in", "tokens_out", "cached_tokens_in", "reasoning_tokens_out", "cost", "cache_hit", "cache_write_tokens_in", "cache_write_1h_tokens_in")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_OUT_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_OUT_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_1H_TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    tokens_in: int
    tokens_out: int
    cached_tokens_in: int
    reasoning_tokens_out: int
    cost: float
    cache_hit: bool
    cache_write_tokens_in: int
    cache_write_1h_tokens_in: int
    def __init__(self, session_id: _Optional[str] = ..., tokens_in: _Optional[int] = ..., tokens_out: _Optional[int] = ..., cached_tokens_in: _Optional[int] = ..., reasoning_tokens_out: _Optional[int] = ..., cost: _Optional[float] = ..., cache_hit: _Optional[bool] = ..., cache_write_tokens_in: _Optional[int] = ..., cache_write_1h_tokens_in: _Optional[int] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("session_id", "finish_reason", "provider", "model", "ttft_ms", "latency_ms", "provider_data_json", "stop_sequence")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    STOP_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    finish_reason: FinishReason
    provider: str
    model: str
    ttft_ms: float
    latency_ms: float
    provider_data_json: str
    stop_sequence: str
    def __init__(self, session_id: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., ttft_ms: _Optional[float] = ..., latency_ms: _Optional[float] = ..., provider_data_json: _Optional[str] = ..., stop_sequence: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("session_id", "code", "message", "retryable", "provider", "retry_after", "http_status", "peer_code")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    PEER_CODE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    code: ErrorCode
    message: str
    retryable: bool
    provider: str
    retry_after: float
    http_status: int
    peer_code: str
    def __init__(self, session_id: _Optional[str] = ..., code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ..., provider: _Optional[str] = ..., retry_after: _Optional[float] = ..., http_status: _Optional[int] = ..., peer_code: _Optional[str] = ...) -> None: ...

class ProviderInfo(_message.Message):
    __slots__ = ("provider", "models", "offline", "provider_type")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_TYPE_FIELD_NUMBER: _ClassVar[int]
    provider: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    offline: bool
    provider_type: str
    def __init__(self, provider: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., offline: _Optional[bool] = ..., provider_type: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("versions", "version", "features", "token", "max_frame_bytes")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    versions: StringList
    version: str
    features: _containers.RepeatedScalarFieldContainer[str]
    token: str
    max_frame_bytes: int
    def __init__(self, versions: _Optional[_Union[StringList, _Mapping]] = ..., version: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., token: _Optional[str] = ..., max_frame_bytes: _Optional[int] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("query_id", "name", "params_json")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    name: str
    params_json: str
    def __init__(self, query_id: _Optional[str] = ..., name: _Optional[str] = ..., params_json: _Optional[str] = ...) -> None: ...

class Answer(_message.Message):
    __slots__ = ("query_id", "result_json", "error")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    result_json: str
    error: Error
    def __init__(self, query_id: _Optional[str] = ..., result_json: _Optional[str] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
