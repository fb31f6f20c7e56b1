"""``Completion``: the result of one request, built from its event stream.

It applies the protocol's failover reset (a ``status: failover`` discards everything before it),
renders as markdown with a footer in notebooks (``_repr_mimebundle_``) and as plain text in a
terminal, and offers ``message`` — the assistant turn to append for the next request, with tool calls
and the provider's opaque ``provider_data`` kept for replay.

How an answer's text reaches a notebook's markdown — dollars as dollars, never live HTML — is
``safe_markdown``'s; ``money`` is how a cost reads (``$0.000953``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gtl_nb.protocol.messages import Done, Error, Message, StreamEvent, Token, ToolCall, Usage
from gtl_nb.protocol.session import Transcript, is_failover
from gtl_nb.safe_markdown import code_span, no_math_html, no_math_markdown
from gtl_nb.words import dollars


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
    stop_sequence: str | None = None  # the stop sequence that ended the answer, when the provider says
    steps: list[Completion] = field(default_factory=list, repr=False)
    """The requests a tool loop made for this answer, in order, each a ``Completion`` of its own (its
    usage, cost and times); empty for an answer of one request. See ``over_steps``."""

    @classmethod
    def from_transcript(cls, transcript: Transcript, provider_type: str | None = None) -> Completion:
        done: Done | None = transcript.done
        return cls._of_fields(
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
            stop_sequence=done.stop_sequence if done else None,
            steps=[],
        )

    @classmethod
    def _of_fields(cls, **fields: Any) -> Completion:
        """The ``Completion`` holding ``fields`` — every one of its fields, by name — as ``cls(**fields)``
        makes it, without running that ``__init__``: a frozen dataclass's sets each field through
        ``object.__setattr__``, ~1.5 k instructions a field — for eighteen, 4 % of an awaited ``acomplete``
        (docs/benchmarks.md, "twenty-third session"). Nothing else happens in that ``__init__`` (no
        ``__post_init__``); a test checks that ``from_transcript`` gives every field, as ``__init__`` would."""
        completion = object.__new__(cls)
        completion.__dict__.update(fields)
        return completion

    @classmethod
    def over_steps(cls, steps: Sequence[Completion]) -> Completion:
        """One answer from the requests of a tool loop (the model called tools, the results went back,
        it answered again): the last request's text, tool calls, model and ending, with the whole
        loop's numbers — ``usage`` summed over the steps (tokens and cost unknown when a step did not
        report them; the prompt-cache and reasoning parts summed over the steps that report them),
        ``latency_ms`` their sum, ``ttft_ms`` the first step's, every step's ``failovers`` — and
        ``steps`` holding each request's own ``Completion``. One step is returned as it is."""
        flat = [step for given in steps for step in (given.steps or [given])]
        if not flat:
            raise ValueError("over_steps() needs at least one step")
        if len(flat) == 1:
            return flat[0]
        last = flat[-1]
        latencies = [step.latency_ms for step in flat]
        return replace(
            last,
            usage=_summed_usage([step.usage for step in flat], last.session_id),
            ttft_ms=flat[0].ttft_ms,
            latency_ms=None if None in latencies else sum(latencies),  # type: ignore[arg-type]
            failovers=[failover for step in flat for failover in step.failovers],
            steps=flat,
        )

    # -- derived ------------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True when the caller stopped the stream (``error.code == "CANCELLED"``); ``text`` is what arrived."""
        return self.error is not None and self.error.code == "CANCELLED"

    @property
    def chunks_arrived(self) -> int:
        """How many pieces of text (``token`` events) of this answer arrived: after a failover, of the
        answer that counts. What a cancelled answer without the provider's usage has to say."""
        count = 0
        for event in self.events:
            if type(event) is Token:
                count += 1
            elif is_failover(event):
                count = 0
        return count

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
        """``12 in · 30 out · $0.000123 · first token 0.21 s · 1.40 s · openai (gpt-4o)``.

        A cancelled answer's says what arrived, ending with ``cancelled``: its usage when the provider
        had sent it, else the pieces of text that arrived — stream chunks, not tokens: a provider may
        send many tokens in one (``12 chunks arrived · 1.40 s · openai (gpt-4o) · cancelled``).
        """
        parts: list[str] = []
        if self.usage is None and self.cancelled:
            count = self.chunks_arrived
            parts.append(f"{count:,} chunk{'' if count == 1 else 's'} arrived")
        if self.usage is not None:
            parts.append(f"{_count(self.usage.tokens_in)} in{_prompt_cache(self.usage)}")
            parts.append(f"{_count(self.usage.tokens_out)} out")
            parts.append(money(self.usage.cost) or "cost unknown")
            if self.usage.cache_hit:
                parts.append("cached")
        if len(self.steps) > 1:  # the numbers around this are the whole tool loop's
            parts.append(f"{len(self.steps)} requests")
        if self.ttft_ms is not None:
            parts.append(f"first token {self.ttft_ms / 1000:.2f} s")
        if self.latency_ms is not None:
            parts.append(f"{self.latency_ms / 1000:.2f} s")
        if self.provider is not None:  # a request that failed before any provider answered has none
            who = self.provider
            said = [self.model] if self.model and self.model != who else []
            if self.provider_type == "echo":
                said.append("offline")
            parts.append(f"{who} ({', '.join(said)})" if said else who)
        if self.truncated:
            parts.append("truncated at max_tokens")
        if self.failovers:  # (each in short: a provider's message runs to lines; ``failovers`` keeps it whole)
            parts.append("failover: " + "; ".join(short_reason(step) for step in self.failovers))
        if self.cancelled:
            parts.append("cancelled")
        return " · ".join(parts)

    def text_markdown(self) -> str:
        """The answer's text as its markdown form shows it (dollars kept dollars); the plain form is ``text``."""
        return no_math_markdown(self.text)

    def _body_markdown(self) -> str:
        body = self.text_markdown()
        for call in self.tool_calls:
            body += f"\n\n{code_span(f'{call.name}({call.arguments})')}"
        if self.error is not None and not self.cancelled:  # (a cancelled answer's footer says so)
            body += f"\n\n**{self.error.code}**: {no_math_html(self.error.message)}"
        return body.strip() or "_(empty answer)_"

    def _repr_markdown_(self) -> str:
        footer = self.footer()
        return self._body_markdown() + (f"\n\n<sub>{no_math_html(footer)}</sub>" if footer else "")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/markdown": self._repr_markdown_(), "text/plain": str(self)}

    def __str__(self) -> str:
        body = self.text
        for call in self.tool_calls:
            body += f"\n[tool call] {call.name}({call.arguments})"
        return f"{body}\n-- {self.footer()}"


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _summed_usage(usages: Sequence[Usage | None], session_id: str) -> Usage | None:
    """Several requests' usage as one: a total a request did not report is unknown (``None``); the
    parts (prompt cache, reasoning) add up what was reported."""
    if all(usage is None for usage in usages):
        return None

    def total(name: str, *, every: bool = True) -> Any:
        values = [getattr(usage, name) if usage is not None else None for usage in usages]
        known = [value for value in values if value is not None]
        if not known or (every and len(known) < len(values)):
            return None
        return sum(known)

    return Usage(
        session_id=session_id,
        tokens_in=total("tokens_in"),
        tokens_out=total("tokens_out"),
        cost=total("cost"),
        cached_tokens_in=total("cached_tokens_in", every=False),
        reasoning_tokens_out=total("reasoning_tokens_out", every=False),
        cache_write_tokens_in=total("cache_write_tokens_in", every=False),
        cache_write_1h_tokens_in=total("cache_write_1h_tokens_in", every=False),
        cache_hit=all(usage is not None and usage.cache_hit for usage in usages),
    )


def _prompt_cache(usage: Usage) -> str:
    """`` (2,048 from prompt cache)`` / `` (2,048 to prompt cache)`` (`` for 1h``, or ``, 1,024 for 1h`` when
    only part was written to the one-hour cache): what the provider's prompt cache did
    with the input, when it did anything (a response served by gtl_nb's own cache says ``cached``)."""
    said = []
    if usage.cached_tokens_in:
        said.append(f"{usage.cached_tokens_in:,} from prompt cache")
    if usage.cache_write_tokens_in:
        hour = usage.cache_write_1h_tokens_in or 0
        kept = " for 1h" if hour == usage.cache_write_tokens_in else f", {hour:,} for 1h" if hour else ""
        said.append(f"{usage.cache_write_tokens_in:,} to prompt cache{kept}")
    return f" ({', '.join(said)})" if said else ""


FOOTER_REASON = 80
"""Characters of a failover's words a footer shows at most (``Completion.failovers`` keeps them whole)."""


def short_reason(text: str, limit: int = FOOTER_REASON) -> str:
    """``text`` on one line, cut at a word before ``limit`` characters with an ellipsis (whole when it
    fits; cut mid-word when the last word boundary is far back: a URL, a JSON body)."""
    text = " ".join(text[: limit * 4].split())  # (a blank line would end the footer's <sub> in markdown)
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    at_word = head.rsplit(" ", 1)[0]
    cut = at_word if len(at_word) >= limit * 3 // 4 else head
    return cut.rstrip(" ,.;:") + "…"


def money(value: float | None) -> str:
    """A cost in USD as it reads in footers and tables: ``$0``, ``$0.000953``, ``$1.2500``; ``""`` when unknown."""
    if value is None or value != value:  # None or NaN: unknown
        return ""
    return dollars(value)


@dataclass(frozen=True)
class Comparison:
    """The same prompt answered by several models: a ``Completion`` or the error per model."""

    models: list[str]
    results: dict[str, Completion | Exception]

    def completion(self, model: str) -> Completion | None:
        result = self.results.get(model)
        return result if isinstance(result, Completion) else None

    def to_dataframe(self) -> Any:
        """One row per model, ranked by latency, then cost, then answer length: a ``gtl_nb.table.Table``
        (a pandas DataFrame of the raw numbers — USD, seconds — shown as every other table shows them:
        ``$0.000197``, ``0.21 s``, a missing value as an empty cell)."""
        import pandas as pd

        from gtl_nb.table import Table

        rows = []
        for model in self.models:
            result = self.results.get(model)
            if isinstance(result, Completion):
                usage = result.usage
                rows.append(
                    {
                        "model": model,
                        "provider": result.provider,
                        "status": "cancelled" if result.cancelled else "ok",
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
        ranked = frame.sort_values(["status", "latency_s", "cost"], ascending=[False, True, True], na_position="last")
        return Table(ranked.reset_index(drop=True))

    def _repr_markdown_(self) -> str:
        parts = []
        for model in self.models:
            result = self.results.get(model)
            if isinstance(result, Completion):
                parts.append(f"### {no_math_html(model)}\n\n{result._repr_markdown_()}")
            else:
                error = no_math_html(str(result))
                parts.append(f"### {no_math_html(model)}\n\n**{getattr(result, 'code', 'ERROR')}**: {error}")
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
