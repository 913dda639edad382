"""Streaming chat: the ChatBackend seam, and a local llama.cpp model whose tokens flow from a worker thread
into asyncio.

A backend streams ChatEvents: text deltas to speak and, when it is offered tools, the calls the model makes.
Other backends (OpenAI, any OpenAI-compatible server, local-with-fallback) are in llm_backends.py."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from voicepipe.engines.priority import FirstAudioGate

log = logging.getLogger(__name__)

# OpenAI's chat message shape: role and content, and for tool use an assistant's `tool_calls` and a `tool`
# message's `tool_call_id`.
Message = dict[str, Any]
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


@dataclass(frozen=True)
class CutShort:
    """The reply reached the token limit: its text stops mid-thought."""


ChatEvent = TextDelta | ToolCall | CutShort


@dataclass(frozen=True)
class ToolSpec:
    """A function offered to the model: its name, what it does, and its arguments as a JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


class ChatBackend(Protocol):
    name: str  # which backend answers: "local", "openai", "local+openai"

    def stream(self, messages: list[Message], key: str = "", tools: Sequence[ToolSpec] = (),
               force_tool: str | None = None) -> AsyncGenerator[ChatEvent, None]:
        """The reply to `messages` as it is generated; `key` (the call) may steer it to a warm cache. With
        `tools`, the model may call them; `force_tool` makes it call that one (arguments only, no text)."""
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
    costs = [count_tokens(m.get("content") or "") + TEMPLATE_TOKENS + len(json.dumps(m.get("tool_calls", "")))
             // 3 for m in system + rest]
    total = sum(costs)
    start = 0
    while total > budget and start < len(rest) - 1:
        total -= costs[len(system) + start]
        start += 1
    return system + rest[start:]


class ToolCallAssembler:
    """OpenAI (and llama.cpp's grammar path) stream a tool call in pieces: its id and name first, then its
    arguments in fragments, each piece tagged with the call's index. Joined here into whole ToolCalls."""

    def __init__(self) -> None:
        self._parts: dict[int, dict[str, str]] = {}

    def add(self, index: int, call_id: str | None, name: str | None, arguments: str | None) -> None:
        part = self._parts.setdefault(index, {"id": "", "name": "", "arguments": ""})
        part["id"] = call_id or part["id"]
        if name and not part["name"]:  # sent once, with the first piece
            part["name"] = name
        part["arguments"] += arguments or ""

    def finish(self) -> list[ToolCall]:
        calls = [ToolCall(p["id"], p["name"], p["arguments"]) for _, p in sorted(self._parts.items()) if p["name"]]
        self._parts.clear()
        return calls


OPEN_TAG, CLOSE_TAG = "<tool_call>", "</tool_call>"
_call_ids = itertools.count(1)


def tool_prompt(tools: Sequence[ToolSpec]) -> str:
    """Tools described for a model without an API for them, in the Hermes format that Qwen2.5, Hermes and many
    other instruct models were trained on (it is what their own chat templates write)."""
    listed = "\n".join(json.dumps(tool.openai(), ensure_ascii=False) for tool in tools)
    return ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query. The functions are "
            f"listed within <tools></tools>:\n<tools>\n{listed}\n</tools>\n\nTo call a function, write a JSON "
            f"object with its name and arguments within {OPEN_TAG}{CLOSE_TAG} tags:\n{OPEN_TAG}\n"
            f'{{"name": <function-name>, "arguments": <args-json-object>}}\n{CLOSE_TAG}')


class TaggedToolCalls:
    """Splits a model's streamed text into the text to speak and the <tool_call>{json}</tool_call> blocks it
    writes in the Hermes format. Text that might be the start of a tag is held back until it is known."""

    def __init__(self) -> None:
        self._buffer = ""
        self._inside = False

    def push(self, text: str) -> list[ChatEvent]:
        self._buffer += text
        events: list[ChatEvent] = []
        while True:
            tag = CLOSE_TAG if self._inside else OPEN_TAG
            found = self._buffer.find(tag)
            if found < 0:
                break
            before, self._buffer = self._buffer[:found], self._buffer[found + len(tag):]
            if self._inside:
                events.extend(self._call(before))
            elif before:
                events.append(TextDelta(before))
            self._inside = not self._inside
        if not self._inside:
            keep = next((n for n in range(len(OPEN_TAG) - 1, 0, -1) if self._buffer.endswith(OPEN_TAG[:n])), 0)
            if len(self._buffer) > keep:
                events.append(TextDelta(self._buffer[:len(self._buffer) - keep]))
                self._buffer = self._buffer[len(self._buffer) - keep:]
        return events

    def finish(self) -> list[ChatEvent]:
        """The end of the reply: a call left open (the model stopped at its token limit) is still tried."""
        rest, inside, self._buffer, self._inside = self._buffer, self._inside, "", False
        if inside:
            return self._call(rest)
        return [TextDelta(rest)] if rest else []

    @staticmethod
    def _call(body: str) -> list[ChatEvent]:
        try:
            call = json.loads(body)
            name, arguments = call["name"], call.get("arguments", {})
            if not isinstance(name, str):
                raise TypeError("name is not a string")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("the model wrote a tool call that does not parse (%s); ignored", type(exc).__name__)
            return []
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        return [ToolCall(f"call_{next(_call_ids)}", name, text)]


def as_plain_text(messages: list[Message]) -> list[Message]:
    """Tool calls and results written into plain messages, Hermes-style, for a chat template that knows only
    role and content."""
    plain: list[Message] = []
    for message in messages:
        if message["role"] == "tool":
            plain.append({"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"})
        elif message.get("tool_calls"):
            calls = "\n".join(f'{OPEN_TAG}\n{{"name": {json.dumps(c["function"]["name"])}, "arguments": '
                              f'{c["function"]["arguments"] or "{}"}}}\n{CLOSE_TAG}' for c in message["tool_calls"])
            plain.append({"role": "assistant", "content": ((message.get("content") or "") + "\n" + calls).strip()})
        else:
            plain.append(message)
    return plain


class InstancePool:
    """Hands out model instances: waiting turns are served in arrival order (FIFO), and a turn gets the
    instance its call used last when that one is free, since its KV cache already holds the conversation."""

    def __init__(self, instances: list[Any]) -> None:
        self._free = list(instances)
        self._count = len(instances)
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

    @property
    def in_use(self) -> int:
        return self._count - len(self._free)

    def release(self, model: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(model)
                return
        self._free.append(model)


def use_batch_threads(model: Any, alone: bool) -> None:
    """Evaluate a prompt on all of llama.cpp's batch threads only while no other instance is generating: its
    threads wait for each other at every step, and with more busy threads than cores each wait can cost a time
    slice. Measured on 2 cores, 2 simultaneous calls x 10 turns: voice-to-voice p50 1057 ms with both batch
    threads always, 827-871 ms so (one call alone: 697-758 ms either way)."""
    import llama_cpp

    params = model.context_params
    llama_cpp.llama_set_n_threads(model.ctx, params.n_threads, params.n_threads_batch if alone else params.n_threads)


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
        # The chat template comes from the GGUF's own metadata (ChatML, Llama 3, Qwen, ...). One that writes
        # tools into the prompt marks a model trained to call them.
        self.chat_format = str(self.instances[0].chat_format)
        self.knows_tools = "tools" in str(self.instances[0].metadata.get("tokenizer.chat_template", ""))
        self.n_ctx = n_ctx
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._pool: InstancePool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self.gate: FirstAudioGate | None = None  # pauses generation while a reply's first words are synthesized

    def warm(self, system_prompt: str, tools: Sequence[ToolSpec] = ()) -> None:
        """Evaluate the system prompt (with the tools offered) on every instance, so its KV prefix is cached
        before the first call."""
        system = system_prompt + (tool_prompt(tools) if tools else "")
        for model in self.instances:
            model.create_chat_completion(
                messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hi"}],
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
                "context": self.n_ctx, "instances": len(self.instances), "template_knows_tools": self.knows_tools}

    def _generate(self, model: Any, messages: list[Message], emit: Callable[[ChatEvent], None],
                  cancelled: threading.Event, tools: Sequence[ToolSpec], force_tool: str | None) -> None:
        """Offered tools are described in the system prompt and called in <tool_call> tags (any GGUF template
        carries that); a forced tool's arguments are generated under a grammar made from its JSON schema."""
        messages = self.fit_history(as_plain_text(messages))
        if force_tool is not None:
            emit(self._forced_call(model, messages, next(t for t in tools if t.name == force_tool)))
            return
        if tools and messages and messages[0]["role"] == "system":
            messages = [{"role": "system", "content": messages[0]["content"] + tool_prompt(tools)}, *messages[1:]]
        chunks = model.create_chat_completion(messages=messages, stream=True, max_tokens=self.max_tokens,
                                              temperature=self.temperature)
        tagged = TaggedToolCalls()
        try:
            for chunk in chunks:
                if self.gate is not None:
                    self.gate.wait()  # the next token waits while a first sentence is synthesized
                if cancelled.is_set():
                    return
                if text := chunk["choices"][0]["delta"].get("content"):
                    for event in tagged.push(text) if tools else [TextDelta(text)]:
                        emit(event)
                if chunk["choices"][0].get("finish_reason") == "length":
                    emit(CutShort())
            for event in tagged.finish():
                emit(event)
        finally:
            chunks.close()

    def _forced_call(self, model: Any, messages: list[Message], tool: ToolSpec) -> ToolCall:
        """The arguments of `tool`, generated as JSON that fits its schema. The prompt is the GGUF's own chat
        template (llama-cpp-python 0.3.36 drops the grammar in its chat path, so the completion is made here)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        template = model.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{self.model_path.name} has no chat template: a forced tool call needs one")
        eos, bos = (model.detokenize([token]).decode("utf-8", "replace") for token in (model.token_eos(),
                                                                                       model.token_bos()))
        prompt = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)(messages=messages).prompt  # type: ignore[arg-type]
        text = ""
        # Near-greedy sampling lets tokens past the grammar (llama-cpp-python 0.3.36: at temperature 0 it wrote
        # '{"n": "4521 }\n\nYou can...'); a fixed seed keeps a retry at a livelier temperature repeatable.
        for temperature in (max(self.temperature, 0.3), 0.8):
            try:
                grammar = LlamaGrammar.from_json_schema(json.dumps(tool.parameters), verbose=False)
            except (ValueError, NotImplementedError, KeyError, RuntimeError):  # beyond llama.cpp's converter:
                grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)  # any JSON, checked afterwards
            completion = model.create_completion(prompt, grammar=grammar, max_tokens=self.max_tokens,
                                                 temperature=temperature, seed=0)
            text = completion["choices"][0]["text"]
            try:
                json.loads(text)
                break
            except ValueError:
                log.warning("the forced %s call was not JSON at temperature %.1f", tool.name, temperature)
        return ToolCall(f"call_{next(_call_ids)}", tool.name, text)

    def _instances_pool(self) -> InstancePool:
        loop = asyncio.get_running_loop()  # futures belong to one loop; tests and tools may run several
        if self._pool is None or self._pool_loop is not loop:
            self._pool, self._pool_loop = InstancePool(self.instances), loop
        return self._pool

    async def stream(self, messages: list[Message], key: str = "", tools: Sequence[ToolSpec] = (),
                     force_tool: str | None = None) -> AsyncGenerator[ChatEvent, None]:
        """Stream the reply's events; `key` (the call) steers the turn to its call's last instance."""
        loop = asyncio.get_running_loop()
        pool = self._instances_pool()
        model = await pool.acquire(key)
        alone = pool.in_use == 1
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                use_batch_threads(model, alone)
                self._generate(model, messages, emit, cancelled, tools, force_tool)
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
                assert isinstance(item, TextDelta | ToolCall | CutShort)
                yield item
        finally:
            # A cancelled turn (barge-in, hang-up, a speculation that lost) stops at the next token; the
            # instance goes back only once its thread has let go of it.
            cancelled.set()
            try:
                await asyncio.shield(worker)
            finally:
                pool.release(model)
