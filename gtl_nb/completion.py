"""``Completion``: the result of one request, built from its event stream.

It applies the protocol's failover reset (a ``status: failover`` discards everything before it),
renders as markdown with a footer in notebooks (``_repr_mimebundle_``) and as plain text in a
terminal, and offers ``message`` — the assistant turn to append for the next request, with tool calls
and the provider's opaque ``provider_data`` kept for replay.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gtl_nb.protocol.messages import Done, Error, Message, StreamEvent, ToolCall, Usage
from gtl_nb.protocol.session import Transcript


@dataclass(frozen=True)
class Completion:
    """One finished completion. ``text`` and ``tool_calls`` reflect the answer after any failover."""

    text: str
    session_id: str
    provider: str | None
    model: str | None
    finish_reason: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning: str = ""
    usage: Usage | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    provider_type: str | None = None
    provider_data: dict[str, Any] | None = None
    failovers: list[str] = field(default_factory=list)
    events: Sequence[StreamEvent] = field(default_factory=list, repr=False)
    error: Error | None = None
    created_at: float | None = None  # Unix time the answer finished (for GAP timestamps and logs)

    @classmethod
    def from_transcript(cls, transcript: Transcript, provider_type: str | None = None) -> Completion:
        done: Done | None = transcript.done
        return cls(
            text=transcript.text,
            session_id=transcript.session_id,
            provider=(done.provider if done else None) or (transcript.error.provider if transcript.error else None),
            model=done.model if done else None,
            finish_reason=done.finish_reason if done else None,
            tool_calls=list(transcript.tool_calls),
            reasoning=transcript.reasoning_text,
            usage=transcript.usage,
            ttft_ms=done.ttft_ms if done else None,
            latency_ms=done.latency_ms if done else None,
            provider_type=provider_type,
            provider_data=done.provider_data if done else None,
            failovers=[f"{s.from_provider} -> {s.to_provider}: {s.reason}" for s in transcript.failovers],
            events=list(transcript.events),
            error=transcript.error,
            created_at=time.time(),
        )

    # -- derived ------------------------------------------------------------------------------

    @property
    def truncated(self) -> bool:
        """True when the answer stopped at the token limit (``finish_reason == "length"``)."""
        return self.finish_reason == "length"

    @property
    def cost(self) -> float | None:
        """USD, or ``None`` when unknown."""
        return self.usage.cost if self.usage else None

    @property
    def tokens_in(self) -> int | None:
        return self.usage.tokens_in if self.usage else None

    @property
    def tokens_out(self) -> int | None:
        return self.usage.tokens_out if self.usage else None

    @property
    def ttft(self) -> float | None:
        """Seconds to the first token."""
        return None if self.ttft_ms is None else self.ttft_ms / 1000.0

    @property
    def latency(self) -> float | None:
        """Seconds from request to the final event."""
        return None if self.latency_ms is None else self.latency_ms / 1000.0

    @property
    def message(self) -> Message:
        """This answer as the assistant message of the next request's history."""
        return Message(
            role="assistant",
            content=self.text or None,
            tool_calls=list(self.tool_calls),
            provider_data=self.provider_data,
        )

    # -- rendering ----------------------------------------------------------------------------

    def footer(self) -> str:
        """``12 in · 30 out · $0.000123 · first token 0.21 s · 1.40 s · openai (gpt-4o)``."""
        parts: list[str] = []
        if self.usage is not None:
            parts.append(f"{_count(self.usage.tokens_in)} in")
            parts.append(f"{_count(self.usage.tokens_out)} out")
            parts.append(_money(self.usage.cost))
            if self.usage.cache_hit:
                parts.append("cached")
        if self.ttft_ms is not None:
            parts.append(f"first token {self.ttft_ms / 1000:.2f} s")
        if self.latency_ms is not None:
            parts.append(f"{self.latency_ms / 1000:.2f} s")
        who = self.provider or "?"
        if self.model and self.model != who:
            who += f" ({self.model})"
        if self.provider_type == "echo":
            who += " (offline)"
        parts.append(who)
        if self.truncated:
            parts.append("truncated at max_tokens")
        if self.failovers:
            parts.append("failover: " + "; ".join(self.failovers))
        return " · ".join(parts)

    def _body_markdown(self) -> str:
        body = self.text
        for call in self.tool_calls:
            body += f"\n\n`{call.name}({call.arguments})`"
        if self.error is not None:
            body += f"\n\n**{self.error.code}**: {self.error.message}"
        return body.strip() or "_(empty answer)_"

    def _repr_markdown_(self) -> str:
        # "&#36;": a "$" in the footer must not pair with one in the answer into a math formula
        return f"{self._body_markdown()}\n\n<sub>{self.footer().replace('$', '&#36;')}</sub>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/markdown": self._repr_markdown_(), "text/plain": str(self)}

    def __str__(self) -> str:
        body = self.text
        for call in self.tool_calls:
            body += f"\n[tool call] {call.name}({call.arguments})"
        return f"{body}\n-- {self.footer()}"


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _money(value: float | None) -> str:
    if value is None:
        return "cost unknown"
    if value == 0:
        return "$0"
    return f"${value:.6f}" if value < 0.01 else f"${value:.4f}"


@dataclass(frozen=True)
class Comparison:
    """The same prompt answered by several models: a ``Completion`` or the error per model."""

    models: list[str]
    results: dict[str, Completion | Exception]

    def completion(self, model: str) -> Completion | None:
        result = self.results.get(model)
        return result if isinstance(result, Completion) else None

    def to_dataframe(self) -> Any:
        """One row per model, ranked by latency, then cost, then answer length (pandas)."""
        import pandas as pd

        rows = []
        for model in self.models:
            result = self.results.get(model)
            if isinstance(result, Completion):
                usage = result.usage
                rows.append(
                    {
                        "model": model,
                        "provider": result.provider,
                        "status": "ok",
                        "error": None,
                        "tokens_in": usage.tokens_in if usage else None,
                        "tokens_out": usage.tokens_out if usage else None,
                        "cost": result.cost,
                        "ttft_s": result.ttft,
                        "latency_s": result.latency,
                        "length_chars": len(result.text),
                        "finish_reason": result.finish_reason,
                    }
                )
            else:
                code = getattr(result, "code", type(result).__name__) if result is not None else "MISSING"
                rows.append(
                    {"model": model, "provider": getattr(result, "provider", None), "status": "error", "error": code}
                )
        frame = pd.DataFrame(
            rows,
            columns=[
                "model",
                "provider",
                "status",
                "error",
                "tokens_in",
                "tokens_out",
                "cost",
                "ttft_s",
                "latency_s",
                "length_chars",
                "finish_reason",
            ],
        )
        frame = frame.astype(
            {
                "tokens_in": "Int64",
                "tokens_out": "Int64",
                "length_chars": "Int64",
                "cost": "float64",
                "ttft_s": "float64",
                "latency_s": "float64",
            }
        )
        ok = frame["status"] == "ok"
        for column in ("latency_s", "cost", "length_chars"):
            frame[f"rank_{column.split('_')[0]}"] = frame[column].where(ok).rank(method="min").astype("Int64")
        return frame.sort_values(
            ["status", "latency_s", "cost"], ascending=[False, True, True], na_position="last"
        ).reset_index(drop=True)

    def _repr_markdown_(self) -> str:
        parts = []
        for model in self.models:
            result = self.results.get(model)
            if isinstance(result, Completion):
                parts.append(f"### {model}\n\n{result._repr_markdown_()}")
            else:
                parts.append(f"### {model}\n\n**{getattr(result, 'code', 'ERROR')}**: {result}")
        return "\n\n".join(parts)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/markdown": self._repr_markdown_(), "text/plain": str(self)}

    def __str__(self) -> str:
        lines = []
        for model in self.models:
            result = self.results.get(model)
            lines.append(f"== {model} ==")
            lines.append(
                str(result) if isinstance(result, Completion) else f"[{getattr(result, 'code', 'ERROR')}] {result}"
            )
        return "\n".join(lines)
