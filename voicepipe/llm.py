"""Streaming chat with a local llama.cpp model: token deltas flow from a worker thread into asyncio."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

Message = dict[str, str]
_DONE = object()


class ChatBackend(Protocol):
    def stream(self, messages: list[Message]) -> AsyncIterator[str]: ...


class LlamaChat:
    """One llama.cpp model shared by every call. llama.cpp holds one sequence, so turns are served one at a
    time (a lock); its KV cache keeps the longest common token prefix between requests, so the system
    prompt and earlier turns of the same call are not evaluated again."""

    def __init__(
        self,
        model_path: Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        max_tokens: int = 120,
        temperature: float = 0.4,
        n_gpu_layers: int = 0,
    ) -> None:
        from llama_cpp import Llama  # imported here: building the extension is optional for unit tests

        self.model = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            verbose=False,
        )
        self.n_ctx = n_ctx
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def fit_history(self, messages: list[Message]) -> list[Message]:
        """Drop the oldest turns (never the system prompt or the newest message) until the prompt fits."""
        budget = self.n_ctx - self.max_tokens - 16
        system = [m for m in messages[:1] if m["role"] == "system"]
        rest = messages[len(system) :]
        costs = [self.count_tokens(m["content"]) + 6 for m in system + rest]  # 6: the template's markers
        total = sum(costs)
        start = 0
        while total > budget and start < len(rest) - 1:
            total -= costs[len(system) + start]
            start += 1
        return system + rest[start:]

    def _generate(self, messages: list[Message], emit: Any, cancelled: threading.Event) -> None:
        with self._lock:
            if cancelled.is_set():
                return
            chunks = self.model.create_chat_completion(
                messages=self.fit_history(messages),  # type: ignore[arg-type]
                stream=True,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
            )
            try:
                for chunk in chunks:
                    if cancelled.is_set():
                        break
                    delta = chunk["choices"][0]["delta"].get("content")  # type: ignore[index]
                    if delta:
                        emit(delta)
            finally:
                chunks.close()  # type: ignore[union-attr]

    async def stream(self, messages: list[Message]) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                self._generate(messages, emit, cancelled)
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
                yield str(item)
        finally:
            # A cancelled turn (barge-in, hang-up) stops the model at the next token.
            cancelled.set()
            await asyncio.shield(worker)
