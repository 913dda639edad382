"""Several nodes behind one number: stream tokens in Redis, so that /voice answered by one node and the media
stream landing on another still make one call. Real Redis (the project machines run one on 127.0.0.1:6379; a test
that needs its own starts a private redis-server), real voicepipe processes on two ports.

Without Redis these tests skip with the reason, unless VOICEPIPE_REQUIRE_SERVICES=1 (set by .ci/run): then a
missing Redis fails them, so CI cannot pass by skipping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import call_sid, free_port
from voicepipe.service.cluster import NODE_TTL_SECONDS, RedisTokenStore
from voicepipe.service.tokens import StoreUnavailable
from voicepipe.simulate import CallRefused, simulate_call

ROOT = Path(__file__).parent.parent
REDIS_URL = os.environ.get("VOICEPIPE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def redis_url() -> str:
    if not redis_reachable(REDIS_URL):
        reason = f"no Redis at {REDIS_URL} (VOICEPIPE_TEST_REDIS_URL)"
        if os.environ.get("VOICEPIPE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason}, and VOICEPIPE_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip(reason)
    return REDIS_URL


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisTokenStore]:
    tokens = RedisTokenStore(redis_url, ttl=0.5, prefix=f"voicepipe-test-{secrets.token_hex(4)}:")
    yield tokens
    await tokens.close()


async def test_redis_tokens_keep_the_rules(store: RedisTokenStore) -> None:
    token = await store.issue(call_sid(1), "AC" + "1" * 32, "+15550001111")
    assert token and await store.issue(call_sid(1), "AC" + "1" * 32) is None  # one token per CallSid, ever
    assert await store.pending() == 1
    grant = await store.redeem(token)
    assert grant is not None and (grant.call_sid, grant.account_sid, grant.caller) == (
        call_sid(1), "AC" + "1" * 32, "+15550001111")
    assert await store.redeem(token) is None and await store.redeem("") is None  # single use
    assert await store.pending() == 0
    late = await store.issue(call_sid(2), "AC" + "1" * 32)
    await asyncio.sleep(0.7)
    assert await store.pending() == 0  # expired tokens no longer hold a slot
    expired = await store.redeem(str(late))
    assert expired is not None and expired.age > store.ttl  # the stream is told "expired", not "unknown"


async def test_an_unreachable_store_is_a_clear_error() -> None:
    tokens = RedisTokenStore(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        await tokens.issue(call_sid(3), "")
    await tokens.close()


@contextlib.contextmanager
def private_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own, on a free port, that the test may kill."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if redis_reachable(url):
            break
        time.sleep(0.05)
    try:
        yield url, process
    finally:
        process.kill()
        process.wait(10)


@contextlib.contextmanager
def node_process(tmp_path: Path, name: str, redis_url: str, max_calls: int = 4
                 ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real `voicepipe serve` process with the default models and the shared Redis; yields its URL and it."""
    port = free_port()
    env = {**os.environ, "VOICEPIPE_PORT": str(port), "VOICEPIPE_REDIS_URL": redis_url,
           "VOICEPIPE_MAX_CALLS": str(max_calls), "VOICEPIPE_SILENCE_REPROMPT_S": "60",
           "VOICEPIPE_DATA_DIR": str(tmp_path / name), "VOICEPIPE_MODELS_DIR": str(ROOT / "models"),
           "TWILIO_AUTH_TOKEN": "", "WEBHOOK_URL": ""}
    process = subprocess.Popen([sys.executable, "-m", "voicepipe", "serve"], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(900):
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/healthz", timeout=1):
                break
            assert process.poll() is None, process.stderr.read().decode()[-2000:] if process.stderr else ""
            time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        process.wait(60)


@contextlib.contextmanager
def node(tmp_path: Path, name: str, redis_url: str) -> Iterator[str]:
    with node_process(tmp_path, name, redis_url) as (url, _):
        yield url


async def cluster_view(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as response:
        return dict((await response.json())["cluster"])


async def until(check: Any, seconds: float) -> float:
    """Poll `check()` (async) until it is true; returns how long that took."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < seconds, "timed out"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


@pytest.mark.models
async def test_voice_on_one_node_and_the_stream_on_another_make_one_call(
    tmp_path: Path, speech_dir: Path
) -> None:
    with private_redis() as (redis_url, redis_process), node(tmp_path, "a", redis_url) as a, \
            node(tmp_path, "b", redis_url) as b:
        result = await simulate_call(a, [speech_dir / "capital.wav"], media_url=b)
        assert result.turns[0].voice_to_voice is not None  # answered by node b, from node a's token
        # The same CallSid asking again, at the other node: a replayed /voice, refused cluster-wide.
        async with aiohttp.ClientSession() as http, http.post(f"{b}/voice", data={
                "CallSid": result.call_sid, "AccountSid": "AC" + "0" * 32}) as response:
            assert response.status == 409
        # Redis goes away in the middle of a call: that call goes on; a new one is told the lines are busy.
        call = asyncio.create_task(simulate_call(a, [speech_dir / "capital.wav", speech_dir / "colour.wav"],
                                                 media_url=b))
        await asyncio.sleep(6)  # the greeting and the first question are under way
        redis_process.kill()
        live = await call
        assert [t.voice_to_voice is not None for t in live.turns] == [True, True]
        with pytest.raises(CallRefused, match="busy"):
            await simulate_call(b, [speech_dir / "thanks.wav"])


@pytest.mark.models
async def test_the_clusters_maximum_holds_across_nodes_and_a_dead_nodes_slots_free(
    tmp_path: Path, speech_dir: Path
) -> None:
    with private_redis() as (redis_url, _), node_process(tmp_path, "a", redis_url, max_calls=1) as (a, _), \
            node_process(tmp_path, "b", redis_url, max_calls=1) as (b, b_process):
        # One call on each node (each answered at the other's /voice): the cluster's 2 slots are taken.
        held = [asyncio.create_task(simulate_call(a, [], stay_on_line=25, media_url=b)),
                asyncio.create_task(simulate_call(b, [], stay_on_line=25, media_url=a))]
        await until(lambda: calls_are(a, 2), 20)
        for entry in (a, b):
            with pytest.raises(CallRefused, match="busy"):
                await simulate_call(entry, [speech_dir / "thanks.wav"])
        # Node b dies with its call: its heartbeat stops, and within the TTL the cluster is a alone (a full).
        b_process.kill()
        gone = await until(lambda: nodes_are(a, 1), NODE_TTL_SECONDS + 5)
        with pytest.raises(CallRefused, match="busy"):
            await simulate_call(a, [speech_dir / "thanks.wav"])
        # A new node brings room: b's dead call holds nothing.
        with node_process(tmp_path, "c", redis_url, max_calls=1) as (c, c_process):
            await until(lambda: nodes_are(a, 2), 10)
            result = await simulate_call(a, [speech_dir / "thanks.wav"], media_url=c)
            assert result.turns[0].voice_to_voice is not None
            # Draining (SIGTERM) leaves the registry at once, well before the heartbeat TTL would.
            c_process.terminate()
            left = await until(lambda: nodes_are(a, 1), NODE_TTL_SECONDS)
        for task in held:
            task.cancel()
    print(f"\ndead node gone from the cluster after {gone:.1f} s (TTL {NODE_TTL_SECONDS:.0f} s); "
          f"a draining node after {left:.1f} s")
    assert left < NODE_TTL_SECONDS / 2


async def calls_are(url: str, count: int) -> bool:
    return (await cluster_view(url)).get("calls") == count


async def nodes_are(url: str, count: int) -> bool:
    return (await cluster_view(url)).get("nodes") == count
