"""An agent that acts: tools offered to the model, run when it calls them, their results spoken. A scripted
OpenAI-compatible server (real HTTP, streaming `tool_calls` deltas in pieces the way OpenAI sends them) drives real
simulated calls with the real STT and TTS; Twilio's REST API and the operator's tool endpoint are local servers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import ACCOUNT, TOKEN, FakeTwilioApi, call_sid, running, serving, wait_for
from voicepipe.callers import piper_speech, with_pauses, write_clip
from voicepipe.config import ConfigError, Settings, load_settings
from voicepipe.conversation.tools import load_tools_file
from voicepipe.engines.llm import LlamaChat, TaggedToolCalls, TextDelta, ToolCall, ToolSpec
from voicepipe.engines.llm_backends import OpenAIChat
from voicepipe.engines.models import Models
from voicepipe.service.records import SqliteCallRecords
from voicepipe.simulate import simulate_call

ROOT = Path(__file__).parent.parent
PUBLIC = "https://voice.example.ngrok.app"
PERSON = "+15550009999"
ORDER_TOOL = {"name": "check_order", "description": "Look up an order's status by its number.",
              "parameters": {"type": "object", "properties": {"order_number": {"type": "string"}},
                             "required": ["order_number"]}}


class ScriptedLLM:
    """An OpenAI-compatible chat server whose answers follow a script keyed on the caller's words: it asks for a
    person -> transfer_call; an order -> a short line, then check_order; done -> end_call; a tool's result ->
    the words that tell the caller. Every request is kept."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
            data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await response.write(f"data: {json.dumps(data)}\n\n".encode())

        async def say(text: str) -> None:
            for word in text.split(" "):
                await chunk({"role": "assistant", "content": word + " "})

        async def call(name: str, arguments: dict[str, Any]) -> None:
            await chunk({"tool_calls": [{"index": 0, "id": f"call_{name}", "type": "function",
                                         "function": {"name": name, "arguments": ""}}]})
            text = json.dumps(arguments)
            for piece in (text[: len(text) // 3], text[len(text) // 3 : 2 * len(text) // 3], text[2 * len(text) // 3 :]):
                await chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})

        last = body["messages"][-1]
        heard = str(last.get("content") or "").lower()
        offered = {tool["function"]["name"] for tool in body.get("tools", [])}
        if last["role"] == "tool":
            await say(f"Your order status is: {json.loads(last['content'])['status']}.")
            finish = "stop"
        elif "person" in heard and "transfer_call" in offered:
            await call("transfer_call", {})
            finish = "tool_calls"
        elif "order" in heard and "check_order" in offered:
            await say("Let me check that.")
            await call("check_order", {"order_number": "4521"})
            finish = "tool_calls"
        elif "done" in heard and "end_call" in offered:
            await call("end_call", {})
            finish = "tool_calls"
        else:
            await say("I see.")
            finish = "stop"
        await chunk({}, finish)
        await response.write(b"data: [DONE]\n\n")
        return response


class OrderEndpoint:
    """The operator's own system: answers order lookups, or never answers when `hang` is set."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.received: list[tuple[dict[str, Any], str]] = []  # (JSON body, X-Voicepipe-Call-Sid)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/orders", self.orders)
        return app

    async def orders(self, request: web.Request) -> web.Response:
        self.received.append((await request.json(), request.headers.get("X-Voicepipe-Call-Sid", "")))
        if self.hang:
            await asyncio.sleep(30)
        return web.json_response({"status": "shipped yesterday"})


@pytest.fixture(scope="module")
def tool_speech(tmp_path_factory: pytest.TempPathFactory, models: Models) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("tool-speech")
    lines = {"order": "What is the status of my order?", "person": "Can I talk to a person, please?",
             "done": "I am done now, thank you."}
    voice = models.synthesizer.voice  # type: ignore[attr-defined]
    return {name: write_clip(directory / f"{name}.wav", with_pauses([piper_speech(voice, text)], []))
            for name, text in lines.items()}


@dataclasses.dataclass
class Stage:
    settings: Settings
    models: Models
    llm: ScriptedLLM
    api: FakeTwilioApi
    orders: OrderEndpoint


@pytest.fixture
async def stage(base_settings: Settings, models: Models, tmp_path: Path,
                request: pytest.FixtureRequest) -> AsyncIterator[Stage]:
    """voicepipe (signed, as in production) with the scripted LLM, Twilio's REST API, the operator's endpoint."""
    llm, api, orders = ScriptedLLM(), FakeTwilioApi(), OrderEndpoint(hang=getattr(request, "param", False))
    async with running(llm.app()) as llm_port, running(api.app()) as api_port, running(orders.app()) as orders_port:
        tools_file = tmp_path / "tools.yaml"
        tool = {**ORDER_TOOL, "url": f"http://127.0.0.1:{orders_port}/orders", "timeout_s": 1,
                "send_caller_number": True}
        tools_file.write_text(json.dumps({"tools": [tool]}))
        settings = dataclasses.replace(
            base_settings, data_dir=tmp_path / "data", llm_backend="openai",
            openai_base_url=f"http://127.0.0.1:{llm_port}/v1", openai_model="scripted",
            twilio_account_sid=ACCOUNT, twilio_auth_token=TOKEN, twilio_api_url=f"http://127.0.0.1:{api_port}",
            webhook_url=PUBLIC, transfer_destinations=(("default", PERSON),), tools_file=tools_file)
        chat = OpenAIChat("", "scripted", settings.openai_base_url)
        yield Stage(settings, dataclasses.replace(models, chat=chat, tools_offered=True), llm, api, orders)


def said(history: list[dict[str, Any]]) -> str:
    return " ".join(str(m["content"]) for m in history if m["role"] == "assistant")


@pytest.mark.models
async def test_a_caller_gets_an_answer_from_the_operators_system_then_a_person(
    stage: Stage, tool_speech: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(stage.settings, stage.models) as (url, ended):
        result = await simulate_call(url, [tool_speech["order"], tool_speech["person"]], auth_token=TOKEN,
                                     public_url=PUBLIC, account_sid=ACCOUNT)
        await wait_for(ended)
    # The operator's endpoint got the model's arguments (and the caller's number, which this tool may send).
    ((body, sid),) = stage.orders.received
    assert body == {"order_number": "4521", "caller_number": "+15550000001"} and sid == result.call_sid
    # The tool's answer went back to the model, whose next words were spoken.
    followup = stage.llm.requests[1]["messages"]
    assert followup[-2]["tool_calls"][0]["function"] == {"name": "check_order", "arguments": '{"order_number": "4521"}'}
    assert followup[-1] == {"role": "tool", "tool_call_id": "call_check_order",
                            "content": '{"status": "shipped yesterday"}'}
    assert "Let me check that. Your order status is: shipped yesterday." in said(ended[0].history)
    # Then the person: the transfer line, and the live call moved by a REST update that <Dial>s the number.
    assert "put you through to a person" in said(ended[0].history)
    ((method, _, form, _),) = [r for r in stage.api.requests if r[1].endswith(f"/Calls/{result.call_sid}.json")]
    dial = f'<?xml version="1.0" encoding="UTF-8"?><Response><Dial>{PERSON}</Dial></Response>'
    assert method == "POST" and form["Twiml"] == [dial]
    assert result.hung_up and ended[0].outcome == "transferred"
    record = SqliteCallRecords(stage.settings.data_dir).get(result.call_sid)
    assert record is not None and (record["outcome"], record["turns"]) == ("transferred", 2)
    with capsys.disabled():  # the record for the closing note
        print("\ntransferred call record:", json.dumps({k: record[k] for k in (
            "call_sid", "direction", "from_number", "outcome", "turns", "voice_to_voice_p50")}))


@pytest.mark.models
@pytest.mark.parametrize("stage", [True], indirect=True)
async def test_a_hanging_tool_gets_an_apology_and_end_call_hangs_up_after_the_closing_line(
    stage: Stage, tool_speech: dict[str, Path]
) -> None:
    async with serving(stage.settings, stage.models) as (url, ended):
        result = await simulate_call(url, [tool_speech["order"], tool_speech["done"]], auth_token=TOKEN,
                                     public_url=PUBLIC, account_sid=ACCOUNT, stay_on_line=5)
        await wait_for(ended)
    spoken = said(ended[0].history)
    # "One moment." while the endpoint is silent, then the apology at its 1 s timeout; the call goes on.
    assert "Let me check that. One moment. Sorry, I couldn't get that information right now." in spoken
    # The failed tool was not handed back to the model (a speculation dropped at a pause may add a request).
    assert not [m for r in stage.llm.requests for m in r["messages"] if m["role"] == "tool"]
    assert [m["role"] for m in ended[0].history].count("user") == 2  # the call went on to the next turn
    # end_call: the closing line was played (its mark echoed), then the call was completed through the API.
    assert spoken.endswith("Thank you for calling. Goodbye!")
    assert result.hung_up and ended[0].outcome == "closing"
    completed = [r for r in stage.api.requests if r[2].get("Status") == ["completed"]]
    assert [r[1] for r in completed] == [f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{result.call_sid}.json"]


@pytest.mark.models
async def test_a_machine_gets_the_voicemail_line_and_the_call_ends(stage: Stage, tool_speech: dict[str, Path]) -> None:
    from twilio.request_validator import RequestValidator

    async with serving(stage.settings, stage.models) as (url, ended), aiohttp.ClientSession() as http:
        call = asyncio.create_task(simulate_call(url, [], auth_token=TOKEN, public_url=PUBLIC, account_sid=ACCOUNT,
                                                 stay_on_line=4))
        await asyncio.sleep(2)  # the greeting plays to the machine's own greeting
        sid = the_call_in_progress(stage)
        form = {"CallSid": sid, "AccountSid": ACCOUNT, "AnsweredBy": "machine_end_beep",
                "MachineDetectionDuration": "4120"}
        signature = RequestValidator(TOKEN).compute_signature(f"{PUBLIC}/amd", form)
        async with http.post(f"{url}/amd", data=form, headers={"X-Twilio-Signature": signature}) as response:
            assert response.status == 204
        result = await call
        await wait_for(ended)
    assert result.call_sid == sid
    ((_, _, update, _),) = [r for r in stage.api.requests if r[1].endswith(f"/Calls/{result.call_sid}.json")]
    voicemail = ('<?xml version="1.0" encoding="UTF-8"?><Response><Say language="en-US" voice="Polly.Joanna">'
                 f"{stage.settings.voicemail_message}</Say><Hangup /></Response>")
    assert update["Twiml"] == [voicemail]
    assert ended[0].outcome == "voicemail"
    record = SqliteCallRecords(stage.settings.data_dir).get(result.call_sid)
    assert record is not None and (record["answered_by"], record["outcome"]) == ("machine_end_beep", "voicemail")


def the_call_in_progress(stage: Stage) -> str:
    """The CallSid of the one call in progress (the simulator picks it), from the records."""
    records = SqliteCallRecords(stage.settings.data_dir)
    assert records.flush()
    (call_record,) = records.recent(1)
    return str(call_record["call_sid"])


# -- the pieces --------------------------------------------------------------------------------------------------


def test_tool_calls_in_a_models_text_are_split_from_its_words() -> None:
    stream = ['Sure, one moment. <tool', '_call>\n{"name": "check_order", "argu', 'ments": {"order_number": "45',
              '21"}}\n</tool_call>', " Anything else? a < b"]
    parser, events = TaggedToolCalls(), []
    for piece in stream:
        events.extend(parser.push(piece))
    events.extend(parser.finish())
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert text == "Sure, one moment.  Anything else? a < b"
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("check_order", {"order_number": "4521"})]
    broken = TaggedToolCalls()
    assert broken.push("<tool_call>{not json</tool_call>ok") == [TextDelta("ok")]


def test_the_tools_file_is_checked_at_start(tmp_path: Path) -> None:
    good = tmp_path / "tools.yaml"
    good.write_text("tools:\n  - name: check_order\n    description: Look up an order.\n    url: https://example.com/o\n"
                    "    parameters: {type: object, properties: {n: {type: string}}}\n"
                    "    headers: {Authorization: 'Bearer ${ORDERS_TOKEN}'}\n")
    (tool,) = load_tools_file(good, {"ORDERS_TOKEN": "s3cret"})
    assert (tool.spec.name, tool.method, tool.timeout_s, tool.headers) == (
        "check_order", "POST", 5.0, (("Authorization", "Bearer s3cret"),))
    cases = {
        "tools:\n  - name: a\n    description: x\n    url: https://e.com\n  - name: b\n    description: y\n"
        "    url: https://e.com\n    parameters: {type: object, properties: {n: {type: strng}}}\n":
            r"tools.yaml:5: tool b: 'strng' is not valid",
        "tools:\n  - name: a b\n    description: x\n    url: https://e.com\n": r"tools.yaml:2: tool a b: `name`",
        "tools:\n  - name: a\n    description: x\n    url: ftp://e.com\n": r"tools.yaml:2: tool a: `url`",
        "tools:\n  - name: a\n    description: x\n    url: https://e.com\n    timeout_s: 90\n": r"`timeout_s`",
        "tools:\n  - name: a\n    description: x\n    url: https://e.com\n    verb: GET\n": r"unknown field 'verb'",
        "tools:\n  - name: a\n    description: x\n    url: https://e.com\n    headers: {X: '${NOPE}'}\n": r"\$\{NOPE\}",
        "tools:\n  - name: end_call\n    description: x\n    url: https://e.com\n": r"built-ins",
        "tools: [\n  {name: a,\n": r"tools.yaml:\d+: not valid YAML or JSON",
        "name: a\n": r"tools.yaml:1: expected a list of tools",
    }
    for text, error in cases.items():
        good.write_text(text)
        with pytest.raises(ConfigError, match=error):
            load_tools_file(good, {})


def test_a_bad_tools_file_stops_the_server_with_the_line(tmp_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text('{"tools": [\n  {"name": "lookup", "description": "x", "url": "https://e.com",\n'
                     '   "parameters": {"type": "object", "required": "n"}}\n]}\n')
    run = subprocess.run([sys.executable, "-m", "voicepipe", "serve"], cwd=tmp_path, capture_output=True, text=True,
                         check=False,
                         timeout=120, env={"PATH": "/usr/bin:/bin", "VOICEPIPE_TOOLS_FILE": str(tools),
                                           "VOICEPIPE_MODELS_DIR": str(ROOT / "models"), "PYTHONPATH": str(ROOT)})
    assert run.returncode == 2, run.stderr
    assert f"{tools}:2: tool lookup: 'n' is not of type 'array'" in run.stderr


def test_tool_settings_are_checked() -> None:
    settings = load_settings({"VOICEPIPE_TRANSFER_NUMBER": "+14155550100",
                              "VOICEPIPE_TRANSFER_DESTINATIONS": "sales=+14155550101, support=+14155550102"},
                             env_file=None)
    assert settings.transfer_destinations == (("default", "+14155550100"), ("sales", "+14155550101"),
                                              ("support", "+14155550102"))
    for env, error in [({"VOICEPIPE_TRANSFER_NUMBER": "4155550100"}, "E.164"),
                       ({"VOICEPIPE_TRANSFER_DESTINATIONS": "Sales=+14155550101"}, "name=\\+number"),
                       ({"VOICEPIPE_LLM_TOOLS": "maybe"}, "auto, on, off")]:
        with pytest.raises(ConfigError, match=error):
            load_settings(env, env_file=None)


@pytest.mark.models
async def test_the_local_model_produces_a_tool_call_that_parses(base_settings: Settings) -> None:
    """Only the plumbing: llama.cpp generates the forced tool's arguments under a grammar of its JSON schema."""
    chat = LlamaChat(base_settings.llm_model_path, n_ctx=1024, max_tokens=48)
    spec = ToolSpec(ORDER_TOOL["name"], ORDER_TOOL["description"], ORDER_TOOL["parameters"])  # type: ignore[arg-type]
    messages = [{"role": "system", "content": "You help callers."},
                {"role": "user", "content": "Where is my order 4521?"}]
    events = [event async for event in chat.stream(messages, tools=[spec], force_tool="check_order")]
    (call,) = [e for e in events if isinstance(e, ToolCall)]
    assert call.name == "check_order" and isinstance(json.loads(call.arguments)["order_number"], str)
    # A tool exchange written back into the conversation goes through the GGUF's plain chat template.
    followup = [*messages, {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"status": "shipped"}'}]
    text = "".join([e.text async for e in chat.stream(followup, tools=[spec]) if isinstance(e, TextDelta)])
    assert text.strip()


async def test_detect_machine_asks_twilio_for_answering_machine_detection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers import FROM, TO
    from voicepipe.cli import main

    api = FakeTwilioApi()
    api.answered_by = "machine_end_beep"
    monkeypatch.chdir(tmp_path)
    async with running(api.app()) as port:
        for name, value in {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_PHONE_NUMBER": FROM,
                            "TO_PHONE_NUMBER": TO, "WEBHOOK_URL": PUBLIC, "VOICEPIPE_DATA_DIR": str(tmp_path / "data"),
                            "VOICEPIPE_TWILIO_API_URL": f"http://127.0.0.1:{port}"}.items():
            monkeypatch.setenv(name, value)
        assert await asyncio.to_thread(main, ["call", "--detect-machine", "--poll", "0.01"]) == 0
        assert await asyncio.to_thread(main, ["call", "--detect-machine", "--message", "Your table is ready.",
                                              "--no-follow"]) == 0
    conversation, message = [form for _, path, form, _ in api.requests if path.endswith("/Calls.json")]
    assert conversation["MachineDetection"] == ["DetectMessageEnd"] and conversation["AsyncAmd"] == ["true"]
    assert conversation["AsyncAmdStatusCallback"] == [f"{PUBLIC}/amd"]
    # A one-way message waits for the beep (synchronous detection): Twilio holds the <Say> until then.
    assert message["MachineDetection"] == ["DetectMessageEnd"] and "AsyncAmd" not in message
    record = SqliteCallRecords(tmp_path / "data").get("CA" + "a" * 32)
    assert record is not None and record["answered_by"] == "machine_end_beep"


async def test_the_amd_webhook_is_signed_and_checked(base_settings: Settings, tmp_path: Path) -> None:
    from tests.fakes import fake_models

    settings = dataclasses.replace(base_settings, data_dir=tmp_path / "data", twilio_auth_token=TOKEN,
                                   webhook_url=PUBLIC)
    async with serving(settings, fake_models()) as (url, _), aiohttp.ClientSession() as http, \
            http.post(f"{url}/amd", data={"CallSid": call_sid(1), "AnsweredBy": "human"}) as response:
        assert response.status == 403  # unsigned
