"""Where answers come from: OpenAI or any OpenAI-compatible server (vLLM, llama.cpp's server, Ollama), and the
local model with a per-turn fallback to such a server. All of them stream, so sentences are spoken as they come.

With an OpenAI-compatible backend configured, the conversation (system prompt, what the caller said, earlier
replies) is sent to that server: it is the only place call content goes besides Twilio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from typing import Any
from urllib.parse import urlsplit

from voicepipe.engines.llm import (
    ChatBackend,
    ChatEvent,
    CutShort,
    Message,
    TextDelta,
    ToolCallAssembler,
    ToolSpec,
    fit_history,
)

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3  # a conservative estimate where the server's tokenizer is not at hand


class OpenAIChat:
    """Chat through the official `openai` async client, streaming."""

    def __init__(
        self,
        api_key: str,
        model: str,
        base_url: str = "",
        context: int = 8192,
        max_tokens: int = 120,
        temperature: float = 0.4,
        timeout: float = 30.0,
    ) -> None:
        from openai import AsyncOpenAI

        # Servers of one's own often need no key, but the client insists on one.
        self.client = AsyncOpenAI(api_key=api_key or "no-key", base_url=base_url or None, timeout=timeout,
                                  max_retries=0)
        self.name = "openai"
        self.model = model
        self.base_url = base_url
        self.context = context
        self.max_tokens = max_tokens
        self.temperature = temperature

    def fit_history(self, messages: list[Message]) -> list[Message]:
        return fit_history(messages, self.context - self.max_tokens - 16, lambda text: len(text) // CHARS_PER_TOKEN + 1)

    @property
    def saturated(self) -> bool:
        return False  # the server queues requests itself

    async def served_models(self, timeout: float) -> list[str]:
        """The model names the server offers (`voicepipe doctor` checks VOICEPIPE_OPENAI_MODEL among them)."""
        page = await self.client.with_options(timeout=timeout).models.list()
        return [model.id async for model in page]

    async def stream(self, messages: list[Message], key: str = "", tools: Sequence[ToolSpec] = (),
                     force_tool: str | None = None) -> AsyncGenerator[ChatEvent, None]:
        options: dict[str, Any] = {}
        if tools:
            options["tools"] = [tool.openai() for tool in tools]
        if force_tool is not None:
            options["tool_choice"] = {"type": "function", "function": {"name": force_tool}}
        chunks: Any = await self.client.chat.completions.create(
            model=self.model,
            messages=self.fit_history(messages),  # type: ignore[arg-type]
            stream=True,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            **options,
        )
        calls = ToolCallAssembler()
        try:
            async for chunk in chunks:
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if delta.content:
                    yield TextDelta(delta.content)
                for part in delta.tool_calls or ():
                    calls.add(part.index, part.id, part.function.name if part.function else None,
                              part.function.arguments if part.function else None)
                if chunk.choices[0].finish_reason:
                    for call in calls.finish():
                        yield call
                    if chunk.choices[0].finish_reason == "length":
                        yield CutShort()
            for call in calls.finish():  # a server that never sent a finish_reason
                yield call
        finally:
            await chunks.close()  # a cancelled turn stops the server's generation too

    def report(self) -> dict[str, object]:
        return {"backend": self.name, "model": self.model, "server": server_host(self.base_url)}


def server_host(base_url: str) -> str:
    """host[:port] of a server URL, never its user:password@ (it goes into /healthz and log lines)."""
    if not base_url:
        return "api.openai.com"
    parts = urlsplit(base_url)
    return (parts.hostname or "?") + (f":{parts.port}" if parts.port else "")


class FallbackChat:
    """The local model first; the OpenAI-compatible server for a turn when the local model fails, gives no
    first token within `first_token_timeout` seconds, or is saturated (all instances busy). After a failure the
    local model rests for `cooldown` seconds instead of being tried (and waited for) on every turn. Without a
    primary (the local model could not be loaded), every turn goes to the server."""

    def __init__(
        self, primary: ChatBackend | None, secondary: ChatBackend, first_token_timeout: float, cooldown: float
    ) -> None:
        self.name = f"local+{secondary.name}"
        self.primary = primary
        self.secondary = secondary
        self.first_token_timeout = first_token_timeout
        self.cooldown = cooldown
        self.answers: Counter[str] = Counter()  # turns answered, by backend
        self.fallbacks: Counter[str] = Counter()  # turns that fell back, by reason
        self.last_fallback_reason = ""
        self._primary_resting_until = 0.0

    @property
    def saturated(self) -> bool:
        return False  # the server takes what the local model cannot

    async def stream(self, messages: list[Message], key: str = "", tools: Sequence[ToolSpec] = (),
                     force_tool: str | None = None) -> AsyncGenerator[ChatEvent, None]:
        reason = self._reason_to_skip_primary()
        if reason is None and self.primary is not None:
            deltas = self.primary.stream(messages, key, tools, force_tool)
            try:
                async with asyncio.timeout(self.first_token_timeout):
                    first = await anext(deltas, None)
            except (Exception, TimeoutError) as exc:
                await deltas.aclose()
                reason = "timeout" if isinstance(exc, TimeoutError) else "error"
                self._primary_resting_until = time.monotonic() + self.cooldown
                log.warning("local LLM %s (%s); answering from %s, local again in %.0f s", reason,
                            type(exc).__name__, self.secondary.name, self.cooldown)
            else:
                self.answers["local"] += 1
                log.info("turn answered by local")
                try:
                    if first is not None:
                        yield first
                        async for delta in deltas:
                            yield delta
                finally:
                    await deltas.aclose()  # closed early (the reply ended): the model stops now, not when collected
                return
        reason = reason or "error"  # (only None here if the primary path fell through, which it cannot)
        self.fallbacks[reason] += 1
        self.last_fallback_reason = reason
        self.answers[self.secondary.name] += 1
        log.info("turn answered by %s (fallback: local %s)", self.secondary.name, reason)
        async with contextlib.aclosing(self.secondary.stream(messages, key, tools, force_tool)) as deltas:
            async for delta in deltas:
                yield delta

    def _reason_to_skip_primary(self) -> str | None:
        if self.primary is None:
            return "unavailable"
        if time.monotonic() < self._primary_resting_until:
            return "resting"
        if self.primary.saturated:
            return "saturated"
        return None

    def report(self) -> dict[str, object]:
        resting = max(0.0, self._primary_resting_until - time.monotonic())
        return {
            "backend": self.name,
            "local": self.primary.report() if self.primary is not None else "unavailable",
            "fallback": self.secondary.report(),
            "answers": dict(self.answers),
            "fallbacks": dict(self.fallbacks),
            "last_fallback_reason": self.last_fallback_reason,
            "local_resting_s": round(resting, 1),
        }
