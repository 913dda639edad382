"""LLM backends against a real OpenAI-compatible server: llama-cpp-python's own, with the offline SmolLM2 model."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import assert_logs_hold_no_words, free_port, serving, user_turns, wait_for
from voicepipe.config import Settings
from voicepipe.engines.llm import ChatBackend, CutShort, LlamaChat, Message, TextDelta, reply_text
from voicepipe.engines.llm_backends import FallbackChat, OpenAIChat
from voicepipe.engines.models import Models, load_chat
from voicepipe.simulate import simulate_call

pytestmark = pytest.mark.models
ROOT = Path(__file__).parent.parent
SERVER_MODEL = "smollm2"  # the alias the server answers to


@pytest.fixture(scope="module")
def llm_server(base_settings: Settings) -> Iterator[str]:
    """`python -m llama_cpp.server` on a loopback port; yields its OpenAI base URL (…/v1)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(base_settings.llm_model_path), "--model_alias",
         SERVER_MODEL, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {server.stderr.read() if server.stderr else ''}")
            try:
                import urllib.request

                with urllib.request.urlopen(f"{base_url}/models", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.25)
        else:
            raise RuntimeError("llama_cpp.server did not start in 120 s")
        yield base_url
    finally:
        server.terminate()
        server.wait(timeout=10)


def openai_settings(settings: Settings, base_url: str, backend: str = "openai") -> Settings:
    return dataclasses.replace(settings, llm_backend=backend, openai_base_url=base_url, openai_model=SERVER_MODEL,
                               openai_context=2048)


async def collect(chat: ChatBackend, messages: list[Message], key: str = "") -> str:
    return await reply_text(chat, messages, key)


def ask(text: str) -> list[Message]:
    return [{"role": "system", "content": "Answer in one short sentence."}, {"role": "user", "content": text}]


async def test_a_call_answered_by_an_openai_compatible_server(
    base_settings: Settings, models: Models, speech_dir: Path, llm_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = openai_settings(base_settings, llm_server)
    remote = dataclasses.replace(models, chat=load_chat(settings))
    with caplog.at_level(logging.INFO):
        async with serving(settings, remote) as (url, ended), aiohttp.ClientSession() as http:
            result = await simulate_call(url, [speech_dir / "capital.wav", speech_dir / "thanks.wav"])
            await wait_for(ended)
            async with http.get(f"{url}/healthz") as response:
                health = await response.json()
    assert all(t.voice_to_voice is not None and t.reply_seconds > 0.3 for t in result.turns)
    assert health["llm"] == {"backend": "openai", "model": SERVER_MODEL, "server": llm_server.split("/")[2]}
    assert [m["role"] for m in ended[0].history][-4:] == ["user", "assistant", "user", "assistant"]
    assert_logs_hold_no_words(caplog.text, ended[0])  # the privacy rule holds in this mode too


async def test_local_model_that_cannot_load_falls_back_to_the_server(
    base_settings: Settings, models: Models, speech_dir: Path, llm_server: str, tmp_path: Path
) -> None:
    corrupt = tmp_path / "broken.gguf"
    corrupt.write_bytes(b"GGUF" + b"\0" * 64)
    settings = dataclasses.replace(openai_settings(base_settings, llm_server, "local+openai"), llm_model=str(corrupt))
    chat = load_chat(settings)
    assert isinstance(chat, FallbackChat) and chat.primary is None
    async with serving(settings, dataclasses.replace(models, chat=chat)) as (url, ended):
        result = await simulate_call(url, [speech_dir / "capital.wav"])
        await wait_for(ended)
    (turn,) = result.turns
    assert turn.voice_to_voice is not None and turn.reply_seconds > 0.3
    assert "capital" in user_turns(ended[0])[0].lower()
    assert chat.report()["answers"] == {"openai": 1} and chat.report()["fallbacks"] == {"unavailable": 1}


class BrokenLocal:
    """Stands in for the local model: fails (or stalls) before its first token."""

    name = "local"
    saturated = False

    def __init__(self, stall: float = 0.0) -> None:
        self.stall, self.calls = stall, 0

    async def stream(self, messages: list[Message], key: str = "", tools: object = (),
                     force_tool: str | None = None) -> AsyncIterator[str]:
        self.calls += 1
        await asyncio.sleep(self.stall)
        raise RuntimeError("injected LLM fault")
        yield ""  # an async generator, like the real one

    def report(self) -> dict[str, object]:
        return {"backend": "local"}


async def test_a_failing_local_model_rests_while_the_server_answers(llm_server: str) -> None:
    remote = OpenAIChat("", SERVER_MODEL, llm_server, context=2048, max_tokens=24)
    local = BrokenLocal()
    chat = FallbackChat(local, remote, first_token_timeout=2.0, cooldown=60.0)  # type: ignore[arg-type]
    answers = [await collect(chat, ask("What is two plus two?")) for _ in range(2)]
    assert all(answers) and local.calls == 1  # the second turn did not wait on the failed model again
    assert chat.fallbacks == {"error": 1, "resting": 1}

    stalled = FallbackChat(BrokenLocal(stall=5.0), remote, first_token_timeout=0.3, cooldown=0.0)  # type: ignore[arg-type]
    assert await collect(stalled, ask("Say hello."))
    assert stalled.fallbacks == {"timeout": 1}


async def test_a_saturated_local_model_sends_the_turn_to_the_server(models: Models, llm_server: str) -> None:
    local = models.chat
    assert isinstance(local, LlamaChat) and len(local.instances) == 2
    chat = FallbackChat(local, OpenAIChat("", SERVER_MODEL, llm_server, context=2048, max_tokens=24), 5.0, 60.0)
    story = ask("Tell me a long story about a dragon.")
    holders = [chat.stream(story, f"call-{n}") for n in range(2)]
    for holder in holders:  # both local instances are now busy mid-answer
        assert await anext(holder)
    try:
        assert await collect(chat, ask("What is two plus two?"), "call-3")
    finally:
        for holder in holders:
            await holder.aclose()
    assert chat.answers == {"local": 2, "openai": 1} and chat.fallbacks == {"saturated": 1}


def test_the_installed_llama_cpp_is_the_build_setup_asks_for() -> None:
    # Without OpenMP (scripts/setup.sh says why). pip's wheel cache ignores CMAKE_ARGS, so only the installed
    # library itself can tell whether the install took the flags.
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    assert "OPENMP = 1" not in info and "AVX2 = 1" in info, info


async def test_a_prompt_uses_every_batch_thread_only_while_no_other_instance_generates(
    base_settings: Settings,
) -> None:
    import llama_cpp

    # Its own instances: which one a call gets depends on which it used before (in other tests, too).
    local = LlamaChat(base_settings.llm_model_path, n_ctx=512, max_tokens=24, instances=2)
    first, second = local.instances
    all_threads = first.context_params.n_threads_batch
    assert all_threads > first.context_params.n_threads  # else there is nothing to tell apart
    assert await collect(local, ask("What is two plus two?"), "call-1")  # alone: all of them
    assert llama_cpp.llama_n_threads_batch(first.ctx) == all_threads
    holder = local.stream(ask("Tell me a long story about a dragon."), "call-1")
    try:
        assert await anext(holder)  # call-1 keeps the first instance busy mid-answer...
        assert await collect(local, ask("What is three plus three?"), "call-2")  # ...so this one is not alone
    finally:
        await holder.aclose()
    assert llama_cpp.llama_n_threads_batch(second.ctx) == second.context_params.n_threads


async def test_when_the_fallback_fails_too_the_caller_hears_an_apology(
    base_settings: Settings, models: Models, speech_dir: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    chat = FallbackChat(BrokenLocal(), OpenAIChat("", SERVER_MODEL, dead), 2.0, 60.0)  # type: ignore[arg-type]
    async with serving(base_settings, dataclasses.replace(models, chat=chat)) as (url, ended):
        result = await simulate_call(url, [speech_dir / "thanks.wav"])
        await wait_for(ended)
    (turn,) = result.turns
    assert any("apology" in m for m in turn.marks) and turn.reply_seconds > 1.0


@pytest.mark.parametrize("backend", ["local", "openai"])
async def test_a_long_call_never_overflows_the_context(models: Models, llm_server: str, backend: str) -> None:
    chat = models.chat if backend == "local" else OpenAIChat("", SERVER_MODEL, llm_server, context=2048, max_tokens=24)
    history: list[Message] = [{"role": "system", "content": "You are a helpful phone assistant."}]
    for turn in range(120):  # ~15,000 tokens of conversation against a 2,048-token context
        history.append({"role": "user", "content": f"Question {turn}: tell me about the weather in Paris in spring."})
        history.append({"role": "assistant", "content": "It is mild and often rainy, with blossoms everywhere. " * 2})
    history.append({"role": "user", "content": "What is the capital of France?"})
    assert await collect(chat, history)




@pytest.mark.parametrize("backend", ["local", "openai"])
async def test_a_reply_cut_off_by_the_token_limit_says_so(base_settings: Settings, llm_server: str, backend: str) -> None:
    # The caller must not hear half a sentence: the backend tells the reply that the model was stopped.
    def chat(max_tokens: int) -> ChatBackend:
        if backend == "local":
            return LlamaChat(base_settings.llm_model_path, n_ctx=512, max_tokens=max_tokens)
        return OpenAIChat("", SERVER_MODEL, llm_server, context=2048, max_tokens=max_tokens)

    story = [event async for event in chat(6).stream(ask("Tell me a long story about a dragon."))]
    assert isinstance(story[-1], CutShort) and [e for e in story if isinstance(e, TextDelta)]
    hello = [event async for event in chat(64).stream(ask("Say hello."))]
    assert hello and not [e for e in hello if isinstance(e, CutShort)]


def test_doctor_asks_the_server_for_its_models(base_settings: Settings, llm_server: str) -> None:
    # The doctor uses the backend's own client (one place builds it): a real server, a right and a wrong model.
    from voicepipe.doctor import check_llm_server

    (found,) = check_llm_server(openai_settings(base_settings, llm_server))
    assert found.ok and f"serves '{SERVER_MODEL}'" in found.detail, found.line()
    wrong = dataclasses.replace(openai_settings(base_settings, llm_server), openai_model="gpt-9")
    (missing,) = check_llm_server(wrong)
    assert not missing.ok and "does not serve 'gpt-9'" in missing.detail and SERVER_MODEL in missing.detail
    (dead,) = check_llm_server(openai_settings(base_settings, f"http://127.0.0.1:{free_port()}/v1"))
    assert not dead.ok and "VOICEPIPE_OPENAI_BASE_URL" in dead.fix
    assert check_llm_server(base_settings) == []  # the local backend has no server to check
