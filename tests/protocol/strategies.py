"""Hypothesis strategies for every GTL message type."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from gtl_nb.protocol import messages as m

text = st.text(max_size=40)
ident = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
opt_int = st.none() | st.integers(min_value=0, max_value=10**9)
opt_float = st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False)
json_scalar = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=10)
json_obj = st.dictionaries(st.text(max_size=8), json_scalar, max_size=4)

tool_calls = st.builds(
    m.ToolCall, id=ident, name=ident, arguments=json_obj.map(lambda d: json.dumps(d, ensure_ascii=False))
)
chat_messages = st.builds(
    m.Message,
    role=st.sampled_from(["system", "user", "assistant", "tool"]),
    content=st.none() | text,
    images=st.lists(st.sampled_from(["data:image/png;base64,AAAA", "https://example.com/a.jpg"]), max_size=2),
    tool_calls=st.lists(tool_calls, max_size=2),
    tool_call_id=st.none() | ident,
    provider_data=st.none() | st.dictionaries(st.text(max_size=5), json_obj, max_size=2),
)
tools = st.builds(
    m.Tool,
    name=ident,
    description=text,
    parameters=st.just({"type": "object", "properties": {"x": {"type": "string"}}}),
)
requests = st.builds(
    m.CompletionRequest,
    session_id=ident,
    model=ident,
    messages=st.lists(chat_messages, min_size=1, max_size=3),
    provider=st.none() | ident,
    stream=st.booleans(),
    max_tokens=opt_int,
    temperature=st.none() | st.floats(0, 2, allow_nan=False),
    top_p=st.none() | st.floats(0, 1, allow_nan=False),
    stop=st.none() | st.lists(text, max_size=2),
    tools=st.none() | st.lists(tools, max_size=2),
    tool_choice=st.none() | st.sampled_from(["auto", "none", "required"]),
    providers=st.none() | st.lists(ident, max_size=3),
    metadata=st.none() | json_obj,
    reasoning=st.booleans(),
)
statuses = st.builds(
    m.Status,
    session_id=ident,
    state=st.sampled_from(["queued", "streaming", "retrying", "failover", "cached"]),
    from_provider=st.none() | ident,
    to_provider=st.none() | ident,
    reason=st.none() | text,
)
tokens = st.builds(m.Token, session_id=ident, text=text)
reasonings = st.builds(m.Reasoning, session_id=ident, text=text)
tool_call_events = st.builds(m.ToolCallEvent, session_id=ident, function=tool_calls)
usages = st.builds(
    m.Usage,
    session_id=ident,
    tokens_in=opt_int,
    tokens_out=opt_int,
    cached_tokens_in=opt_int,
    reasoning_tokens_out=opt_int,
    cost=opt_float,
    cache_hit=st.booleans(),
)
dones = st.builds(
    m.Done,
    session_id=ident,
    finish_reason=st.sampled_from(["stop", "length", "tool_calls", "content_filter", "other"]),
    provider=st.none() | ident,
    ttft_ms=opt_float,
    latency_ms=opt_float,
)
errors = st.builds(
    m.Error,
    session_id=ident,
    code=st.sampled_from(list(m.ErrorCode.__args__)),  # type: ignore[attr-defined]
    message=text,
    retryable=st.booleans(),
    provider=st.none() | ident,
    retry_after=opt_float,
    http_status=st.none() | st.integers(100, 599),
)
model_infos = st.builds(
    m.ModelInfo,
    name=ident,
    context_window=opt_int,
    max_tokens=opt_int,
    supports_streaming=st.booleans(),
    supports_functions=st.booleans(),
    supports_vision=st.booleans(),
    cost_per_1k_input=opt_float,
    cost_per_1k_output=opt_float,
)
provider_infos = st.builds(
    m.ProviderInfo, provider=ident, models=st.lists(model_infos, max_size=3), offline=st.booleans()
)
hellos = st.builds(
    m.Hello,
    versions=st.none() | st.lists(st.sampled_from(["1.0", "1.1", "2.0"]), max_size=3),
    version=st.none() | st.just("1.0"),
    features=st.lists(ident, max_size=3),
)
cancels = st.builds(m.Cancel, session_id=ident)

any_message = st.one_of(
    requests,
    statuses,
    tokens,
    reasonings,
    tool_call_events,
    usages,
    dones,
    errors,
    provider_infos,
    hellos,
    cancels,
)
