"""Hypothesis strategies for the arguments of ``Client.request`` / ``complete`` — well-formed and hostile.

Reused by the gateway's tests: whatever a caller can pass to the embedded client, a remote caller can
send over the network.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

# text of every kind, lone surrogates and control characters included
any_text = st.text(max_size=60) | st.text(alphabet=st.characters(), max_size=20)
json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | any_text


def deep(depth: int) -> dict:
    """A dict nested ``depth`` levels deep (for depth limits)."""
    root: dict = {}
    node = root
    for _ in range(depth):
        node["k"] = {}
        node = node["k"]
    return root


json_values = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=20,
) | st.integers(min_value=60, max_value=3000).map(deep)

numbers = (
    st.none()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0, 2.5])
)
message_dicts = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "robot", ""]), "content": st.none() | any_text}
)
messages = (
    any_text
    | st.lists(any_text | message_dicts, max_size=4)
    | message_dicts
    | st.integers()
    | st.none()
    | st.binary(max_size=10)
    | st.builds(object)
)
models = st.sampled_from(["echo", "echo:echo", "", "nope", "openai:gpt-4o", "echo:"]) | any_text
providers = st.none() | any_text | st.lists(st.sampled_from(["echo", "nope"]) | st.integers(), max_size=3)
tools = st.none() | st.lists(
    st.fixed_dictionaries({"name": any_text, "parameters": json_values}) | st.builds(dict), max_size=2
)

#: keyword arguments for ``Client.complete(model, messages, **kwargs)``
complete_kwargs = st.fixed_dictionaries(
    {},
    optional={
        "system": st.none() | any_text,
        "temperature": numbers,
        "top_p": numbers,
        "max_tokens": st.none() | st.integers(min_value=-5, max_value=10**20),
        "stop": st.none() | any_text | st.lists(any_text, max_size=3),
        "metadata": st.none() | json_values,
        "response_format": st.none() | json_values,
        "providers": providers,
        "tools": tools,
        "tool_choice": st.none() | st.sampled_from(["auto", "none", "required", "x"]) | json_values,
        "reasoning": st.booleans(),
        "reasoning_effort": st.none() | st.sampled_from(["none", "high", "max", "huge", "", "HIGH"]) | json_values,
        "reasoning_budget": st.none() | st.integers(min_value=-5, max_value=10**20) | json_values,
        "cache": st.none() | st.booleans(),
    },
)

#: arguments a caller plausibly passes (most are sent): for the sent-request half of the property
plausible_models = st.sampled_from(["echo", "echo:echo", "echo", "no-such-model"])
plausible_messages = st.text(min_size=1, max_size=80) | st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.text(max_size=40)}),
    min_size=1,
    max_size=3,
)
plausible_kwargs = st.fixed_dictionaries(
    {},
    optional={
        "system": st.text(max_size=30),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 50),
        "stop": st.lists(st.text(min_size=1, max_size=5), max_size=2),
        "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
        "providers": st.lists(st.sampled_from(["echo", "nope", "echo:echo"]), min_size=1, max_size=3),
        "tools": st.just([{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}]),
        "reasoning": st.booleans(),
        "reasoning_effort": st.sampled_from(["minimal", "low", "xhigh"]),  # (every budget below agrees)
        "reasoning_budget": st.integers(1, 40000),
        "cache": st.booleans(),
    },
)
