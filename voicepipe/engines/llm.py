"""Streaming chat: the ChatBackend seam, and a local llama.cpp model whose tokens flow from a worker thread
into asyncio.

A backend streams ChatEvents: text deltas to speak and, from models that call functions, tool calls. Other
backends (OpenAI, any OpenAI-compatible server, local-with-fallback) are in llm_backends.py."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

Message = dict[str, str]
_DONE = object()


@dataclass(frozen=True)
class TextDelta:
    """The next piece of the reply's text."""

    text: str


@dataclass(frozen=True)
class ToolCall:
    """A function the model asks to run, complete (streamed arguments already joined)."""

    id: str
    name: str
    arguments: str  # JSON text as the model wrote it: parse and check it before use


ChatEvent = TextDelta | ToolCall


class ChatBackend(Protocol):
    name: str  # which backend answers: "local", "openai", "local+openai"

    def stream(self, messages: list[Message], key: str = "") -> AsyncGenerator[ChatEvent, None]:
        """The reply to `messages` as it is generated; `key` (the call) may steer it to a warm cache."""
        ...

    @property
    def saturated(self) -> bool:
        """A new turn would have to wait for capacity (every local instance busy)."""
        ...

    def report(self) -> dict[str, object]: ...


async def reply_text(chat: ChatBackend, messages: list[Message], key: str = "") -> str:
    """The whole reply's text, for callers that do not stream (tool calls are not run here)."""
    return "".join([event.text async for event in chat.stream(messages, key) if isinstance(event, TextDelta)])


TEMPLATE_TOKENS = 6  # a chat template's markers around each message


def fit_history(messages: list[Message], budget: int, count_tokens: Callable[[str], int]) -> list[Message]:
    """Drop the oldest turns (never the system prompt or the newest message) until the prompt fits `budget`
    tokens, so a long call never overflows the model's context."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system) :]
    costs = [count_tokens(m["content"]) + TEMPLATE_TOKENS for m in system + rest]
    total = sum(costs)
    start = 0
    while total > budget and start < len(rest) - 1:
        total -= costs[len(system) + start]
        start += 1
    return system + rest[start:]


class InstancePool:
    """Hands out model instances: waiting turns are served in arrival order (FIFO), and a turn gets the
    instance its call used last when that one is free, since its KV cache already holds the conversation."""

    def __init__(self, instances: list[Any]) -> None:
        self._free = list(instances)
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._last_user: dict[int, str] = {}

    async def acquire(self, key: str) -> Any:
        if self._free and not self._waiters:
            preferred = [m for m in self._free if self._last_user.get(id(m)) == key]
            model = preferred[0] if preferred else self._free[0]
            self._free.remove(model)
        else:
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                model = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self.release(waiter.result())  # handed over just as we were cancelled: pass it on
                else:
                    self._waiters.remove(waiter)
                raise
        self._last_user[id(model)] = key
        return model

    @property
    def busy(self) -> bool:
        return not self._free

    def release(self, model: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(model)
                return
        self._free.append(model)


class LlamaChat:
    """A local llama.cpp chat model shared by every call.

    One llama.cpp context serves one sequence at a time, so the model is loaded `instances` times (a 135M
    GGUF costs ~100 MB each) and turns take a free instance in arrival order: a call with a long answer
    cannot starve the others, it only waits its turn. Each instance's KV cache keeps the longest common
    token prefix between requests, so the shared system prompt is not evaluated again."""

    def __init__(
        self,
        model_path: Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        max_tokens: int = 120,
        temperature: float = 0.4,
        n_gpu_layers: int = 0,
        instances: int = 1,
    ) -> None:
        from llama_cpp import Llama  # imported here: building the extension is optional for unit tests

        self.instances = [
            Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                  verbose=False)
            for _ in range(instances)
        ]
        self.name = "local"
        self.model_path = model_path
        # The chat template comes from the GGUF's own metadata (ChatML, Llama 3, Qwen, ...).
        self.chat_format = str(self.instances[0].chat_format)
        self.n_ctx = n_ctx
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._pool: InstancePool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None

    def warm(self, system_prompt: str) -> None:
        """Evaluate the system prompt on every instance, so its KV prefix is cached before the first call."""
        for model in self.instances:
            model.create_chat_completion(
                messages=[{"role": "system", "content": system_prompt}, {"role": "user", "content": "Hi"}],
                max_tokens=1,
            )

    def count_tokens(self, text: str) -> int:
        return len(self.instances[0].tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def fit_history(self, messages: list[Message]) -> list[Message]:
        return fit_history(messages, self.n_ctx - self.max_tokens - 16, self.count_tokens)

    @property
    def saturated(self) -> bool:
        """Every instance is busy: a new turn would wait for one."""
        return self._pool is not None and self._pool.busy

    def report(self) -> dict[str, object]:
        return {"backend": self.name, "model": self.model_path.name, "chat_format": self.chat_format,
                "context": self.n_ctx, "instances": len(self.instances)}

    def _generate(self, model: Any, messages: list[Message], emit: Any, cancelled: threading.Event) -> None:
        chunks = model.create_chat_completion(
            messages=self.fit_history(messages),
            stream=True,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )
        try:
            for chunk in chunks:
                if cancelled.is_set():
                    break
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    emit(delta)
        finally:
            chunks.close()

    def _instances_pool(self) -> InstancePool:
        loop = asyncio.get_running_loop()  # futures belong to one loop; tests and tools may run several
        if self._pool is None or self._pool_loop is not loop:
            self._pool, self._pool_loop = InstancePool(self.instances), loop
        return self._pool

    async def stream(self, messages: list[Message], key: str = "") -> AsyncGenerator[ChatEvent, None]:
        """Stream the reply's text deltas; `key` (the call) steers the turn to its call's last instance."""
        loop = asyncio.get_running_loop()
        pool = self._instances_pool()
        model = await pool.acquire(key)
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                self._generate(model, messages, emit, cancelled)
            except BaseException as exc:  # handed to the awaiting side, which re-raises it
                emit(exc)
            finally:
                emit(_DONE)

        worker = loop.run_in_executor(None, work)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield TextDelta(str(item))
        finally:
            # A cancelled turn (barge-in, hang-up, a speculation that lost) stops at the next token; the
            # instance goes back only once its thread has let go of it.
            cancelled.set()
            try:
                await asyncio.shield(worker)
            finally:
                pool.release(model)
