"""Several nodes behind one number: stream tokens in Redis, so that /voice answered by one node and the media
stream landing on another still make one call. Real Redis (the project machines run one on 127.0.0.1:6379; a test
that needs its own starts a private redis-server), real voicepipe processes on two ports.

Without Redis these tests skip with the reason, unless VOICEPIPE_REQUIRE_SERVICES=1 (set by .ci/run): then a
missing Redis fails them, so CI cannot pass by skipping."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import TOKEN, call_sid, free_port
from voicepipe.service.cluster import NODE_TTL_SECONDS, RedisTokenStore
from voicepipe.service.tokens import StoreUnavailable
from voicepipe.simulate import CallRefused, simulate_call

ROOT = Path(__file__).parent.parent
REDIS_URL = os.environ.get("VOICEPIPE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PUBLIC = "https://voice.example.ngrok.app"
DATABASE_URL = os.environ.get("VOICEPIPE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def unavailable(reason: str) -> None:
    """Skip with the reason; under VOICEPIPE_REQUIRE_SERVICES=1 (CI), fail instead."""
    if os.environ.get("VOICEPIPE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and VOICEPIPE_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(reason)


@pytest.fixture
def redis_url() -> str:
    if not redis_reachable(REDIS_URL):
        unavailable(f"no Redis at {REDIS_URL} (VOICEPIPE_TEST_REDIS_URL)")
    return REDIS_URL


@pytest.fixture
def database_url() -> Iterator[str]:
    """A schema of this test's own in the project machine's PostgreSQL, dropped afterwards."""
    import psycopg

    schema = f"voicepipe_test_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(DATABASE_URL, autocommit=True, connect_timeout=3) as db:
            db.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        unavailable(f"no PostgreSQL at {DATABASE_URL} (VOICEPIPE_TEST_DATABASE_URL): {exc}")
    yield f"{DATABASE_URL}{'&' if '?' in DATABASE_URL else '?'}options=-csearch_path%3D{schema}"
    with psycopg.connect(DATABASE_URL, autocommit=True) as db:
        db.execute(f"DROP SCHEMA {schema} CASCADE")


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
        unavailable("redis-server is not installed")
    for _ in range(3):  # a free port can be taken again before redis-server binds it: try another
        port = free_port()
        process = subprocess.Popen([str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no"], stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(100):
            if redis_reachable(url) or process.poll() is not None:
                break
            time.sleep(0.05)
        if redis_reachable(url):
            break
        process.kill()
        process.wait(10)
    else:
        raise AssertionError("a private redis-server did not start")
    try:
        yield url, process
    finally:
        process.kill()
        process.wait(10)


@contextlib.contextmanager
def node_process(tmp_path: Path, name: str, redis_url: str, max_calls: int = 4, node_name: str = "",
                 signed: bool = False) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real `voicepipe serve` process with the default models and the shared Redis; yields its URL and it.
    `signed`: it checks Twilio's signatures, as behind a proxy in production (TOKEN, PUBLIC)."""
    port = free_port()
    env = {**os.environ, "VOICEPIPE_PORT": str(port), "VOICEPIPE_REDIS_URL": redis_url,
           "VOICEPIPE_MAX_CALLS": str(max_calls), "VOICEPIPE_SILENCE_REPROMPT_S": "60",
           "VOICEPIPE_NODE_NAME": node_name or f"node-{name}",
           "VOICEPIPE_DATA_DIR": str(tmp_path / name), "VOICEPIPE_MODELS_DIR": str(ROOT / "models"),
           "TWILIO_AUTH_TOKEN": TOKEN if signed else "", "WEBHOOK_URL": PUBLIC if signed else ""}
    log = tmp_path / f"node-{name}.log"  # a file, not a pipe: a pipe nobody reads would block the node
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "voicepipe", "serve"], env=env, cwd=tmp_path,
                                   stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(900):
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/healthz", timeout=1):
                break
            assert process.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        process.wait(60)


@contextlib.contextmanager
def node(tmp_path: Path, name: str, redis_url: str, signed: bool = False) -> Iterator[str]:
    with node_process(tmp_path, name, redis_url, signed=signed) as (url, _):
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
        try:
            await until(lambda: calls_are(a, 2), 30)
        except AssertionError:
            states = [t.exception() if t.done() else "running" for t in held]
            logs = "".join((tmp_path / f"node-{n}.log").read_text()[-1500:] for n in "ab")
            raise AssertionError(f"cluster {await cluster_view(a)}; calls {states}\n{logs}") from None
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


def test_postgres_records_migrate_once_from_several_nodes_and_keep_the_rules(database_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from voicepipe.service.records_pg import PostgresCallRecords, migrate

    with ThreadPoolExecutor(4) as pool:  # four nodes starting at once
        applied = list(pool.map(lambda _: migrate(database_url), range(4)))
    assert sorted(applied) == [[], [], [], [1]]  # each migration ran once between them
    a, b = PostgresCallRecords(database_url, "node-a"), PostgresCallRecords(database_url, "node-b")
    a.call_offered(call_sid(60), "inbound", "+15550001111", "+15550002222", "en")
    b.status(call_sid(60), "completed", 4)  # callbacks out of order, on another node
    b.status(call_sid(60), "ringing", 1)
    a.stream_started(call_sid(60))
    a.turn(call_sid(60), 1, {"voice_to_voice": 0.5}, [{"role": "user", "content": "hola"}])
    b.call_offered(call_sid(61), "inbound", "", "")
    b.stream_started(call_sid(61))
    assert a.flush() and b.flush()
    call = b.get(call_sid(60))
    assert call is not None and (call["status"], call["from_number"], call["turns"]) == ("completed", "+15550001111", 0)
    assert [s["status"] for s in call["status_history"]] == ["ringing", "completed"]
    assert call["turn_timings"][0]["voice_to_voice"] == 0.5 and call["transcript"][0]["content"] == "hola"
    # node-a restarts after a crash: it closes its own open call, not node-b's live one.
    a.close_interrupted()
    assert a.flush()
    assert (a.get(call_sid(60)) or {})["outcome"] == "interrupted" and (a.get(call_sid(61)) or {})["outcome"] == ""
    assert [c["call_sid"] for c in a.recent(5)] == [call_sid(61), call_sid(60)]
    assert [t["call_sid"] for t in b.recent_turns(5)] == [call_sid(60)]
    a.close()
    b.close()


@pytest.mark.models
async def test_records_from_both_nodes_read_back_and_a_killed_node_closes_its_call(
    tmp_path: Path, speech_dir: Path, database_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    from voicepipe.cli import main

    monkeypatch.setenv("VOICEPIPE_DATABASE_URL", database_url)  # for the nodes, and for `voicepipe calls` here
    with private_redis() as (redis_url, _), node_process(tmp_path, "a", redis_url) as (a, _), \
            node_process(tmp_path, "b", redis_url) as (b, b_process):
        first = await simulate_call(a, [speech_dir / "thanks.wav"], media_url=b)
        async with aiohttp.ClientSession() as http:
            for url, (status, sequence) in ((a, ("in-progress", "2")), (b, ("completed", "3"))):
                async with http.post(f"{url}/status", data={"CallSid": first.call_sid, "CallStatus": status,
                                                            "SequenceNumber": sequence}) as response:
                    assert response.status == 204
        # A second call dies with node b (kill -9) once its first turn is stored.
        second = asyncio.create_task(simulate_call(a, [speech_dir / "capital.wav"], stay_on_line=30, media_url=b))
        await until(lambda: turn_stored(database_url), 60)
        b_process.kill()
        with contextlib.suppress(Exception):
            await second
        with node_process(tmp_path, "b2", redis_url, node_name="node-b"):  # node-b again: it closes its lost call
            await asyncio.sleep(2)
    assert await asyncio.to_thread(main, ["calls"]) == 0
    listed = capsys.readouterr().out
    assert first.call_sid in listed and "interrupted" in listed
    assert await asyncio.to_thread(main, ["calls", "show", first.call_sid, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [s["status"] for s in shown["status_history"]] == ["in-progress", "completed"]
    assert shown["turns"] == 1 and shown["outcome"] == "caller_hung_up"


async def turn_stored(database_url: str) -> bool:
    import psycopg

    with psycopg.connect(database_url) as db:
        row = db.execute("SELECT COUNT(*) FROM turns t JOIN calls c USING (call_sid) WHERE c.ended_at IS NULL"
                         ).fetchone()
    return bool(row and row[0] >= 1)


def test_doctor_checks_redis_and_postgresql(redis_url: str, database_url: str) -> None:
    from voicepipe.config import load_settings
    from voicepipe.doctor import check_shared_stores
    from voicepipe.service.records_pg import migrate

    def lines(redis: str, database: str) -> list[str]:
        settings = load_settings({"VOICEPIPE_REDIS_URL": redis, "VOICEPIPE_DATABASE_URL": database}, env_file=None)
        return [finding.line() for finding in check_shared_stores(settings)]

    migrate(database_url)
    assert lines(redis_url, database_url) == [
        "ok    redis: 127.0.0.1 answers (stream tokens and capacity are shared)",
        "ok    postgresql: 127.0.0.1:5432/test: call records, schema version 1"]
    port = free_port()
    redis_line, database_line = lines(f"redis://127.0.0.1:{port}/0", f"postgresql://postgres@127.0.0.1:{port}/test")
    assert redis_line.startswith("FAIL  redis: 127.0.0.1:") and "VOICEPIPE_REDIS_URL" in redis_line
    assert database_line.startswith(f"FAIL  postgresql: 127.0.0.1:{port}/test: connection") and "\n" not in database_line


@contextlib.contextmanager
def nginx_proxy(tmp_path: Path, upstreams: list[str]) -> Iterator[str]:
    """deploy/nginx.conf, run by Debian's nginx, with these nodes as its upstream and a free loopback port."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.path.exists(binary), "nginx is needed: scripts/test_deps.sh installs it"
    port = free_port()
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    servers = "".join(f"        server {url.removeprefix('http://')} max_fails=0;\n" for url in upstreams)
    conf = conf.replace("        server node1:5000 max_fails=0;\n        server node2:5000 max_fails=0;\n", servers)
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
    conf = f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/nginx-error.log;\n" + conf.replace(
        "http {", "http {\n    access_log off;", 1)
    assert servers and f"127.0.0.1:{port}" in conf
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    process = subprocess.Popen([binary, "-c", str(path), "-p", str(tmp_path), "-g", "daemon off;"])
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/healthz", timeout=1):
            break
        time.sleep(0.05)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.models
async def test_load_through_nginx_two_nodes_beside_one(tmp_path: Path, speech_dir: Path) -> None:
    """4 simultaneous calls of 2 turns through a real nginx: to one node, then spread over two (numbers printed
    for the note; on this 2-core machine both nodes share the same cores, so two nodes are no faster here)."""
    rows = []
    with private_redis() as (redis_url, _):
        for count in (1, 2):
            with contextlib.ExitStack() as stack:
                nodes = [stack.enter_context(node(tmp_path, f"load{count}-{i}", redis_url, signed=True))
                         for i in range(count)]
                proxy = stack.enter_context(nginx_proxy(tmp_path, nodes))
                calls = await asyncio.gather(*(simulate_call(
                    proxy, [speech_dir / "capital.wav", speech_dir / "colour.wav"], auth_token=TOKEN,
                    public_url=PUBLIC) for _ in range(4)))
            turns = [turn for call in calls for turn in call.turns]
            assert all(turn.voice_to_voice is not None for turn in turns)
            latencies = sorted(float(turn.voice_to_voice or 0) for turn in turns)
            rows.append(f"{count} node(s) x 4 calls through nginx: voice-to-voice p50 "
                        f"{latencies[len(latencies) // 2] * 1000:.0f} ms, p95 "
                        f"{latencies[int(len(latencies) * 0.95)] * 1000:.0f} ms, "
                        f"underruns {sum(turn.underruns for turn in turns)} over {len(turns)} turns")
    print("\n" + "\n".join(rows))


class PrivatePostgres:
    """A PostgreSQL server of this test's own (Debian's binaries, run as the postgres user), that the test may
    stop and start again: the database going away and coming back."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not found or shutil.which("runuser") is None:
            unavailable("PostgreSQL's server binaries (or runuser) are not installed")
        self.bin = found[-1].parent
        self.dir = Path(tempfile.mkdtemp(prefix="voicepipe-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")

    def _as_postgres(self, tool: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / tool), *args], check=True,
                       capture_output=True, cwd=self.dir)

    def start(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.models
async def test_postgresql_going_away_mid_call_loses_nothing(
    base_settings: Any, models: Any, speech_dir: Path, tmp_path: Path
) -> None:
    from tests.helpers import serving, wait_for
    from voicepipe.service.records_pg import PostgresCallRecords

    database = PrivatePostgres()
    try:
        database.start()
        settings = dataclasses.replace(base_settings, data_dir=tmp_path / "data", database_url=database.url,
                                       node_name="node-a")
        async with serving(settings, models) as (url, ended):
            call = asyncio.create_task(simulate_call(url, [speech_dir / "capital.wav", speech_dir / "colour.wav"]))
            await asyncio.sleep(3)  # the greeting plays: the call's rows are written
            database.stop()  # the database goes away mid-call
            first = await call
            second = await simulate_call(url, [speech_dir / "thanks.wav"])  # a new call during the outage
            await wait_for(ended, 2)
            assert all(t.voice_to_voice is not None for t in [*first.turns, *second.turns])
            database.start()  # it comes back: the queued writes go in (the server flushes them as it stops)
        records = PostgresCallRecords(database.url, "reader")
        one, two = records.get(first.call_sid), records.get(second.call_sid)
        assert one is not None and two is not None
        assert (one["turns"], len(one["turn_timings"]), one["outcome"]) == (2, 2, "caller_hung_up")
        assert (two["turns"], len(two["turn_timings"]), two["outcome"]) == (1, 1, "caller_hung_up")
        assert [c["call_sid"] for c in records.recent(5)] == [second.call_sid, first.call_sid]  # each once
        records.close()
    finally:
        database.remove()
