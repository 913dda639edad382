"""What the agent can do besides talk: the built-in actions (transfer_call, end_call) and the operator's own HTTP
tools from VOICEPIPE_TOOLS_FILE. The model is offered their specs; a call it makes is checked against the tool's
JSON schema, then run. An HTTP tool sends its arguments (and the caller's number only where the file allows it)
to the operator's endpoint: nothing else leaves the server, and no tool touches the network unless configured."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import yaml

from voicepipe.config import ConfigError, Settings
from voicepipe.engines.llm import ToolCall, ToolSpec

log = logging.getLogger(__name__)

MAX_RESULT_CHARS = 2000  # of an endpoint's answer, given back to the model
MAX_TIMEOUT_S = 30.0
DEFAULT_TIMEOUT_S = 5.0
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
ENV_REFERENCE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
END_CALL = ToolSpec("end_call", "End the phone call after saying goodbye, when the caller has nothing more to ask "
                    "or asks to hang up.", {"type": "object", "properties": {}})


@dataclass(frozen=True)
class HttpTool:
    """One of the operator's tools: the spec the model sees, and where and how it is called."""

    spec: ToolSpec
    method: str  # GET: arguments as query parameters; POST: arguments as a JSON object
    url: str
    timeout_s: float
    send_caller_number: bool  # add the caller's number (caller_number) to what is sent
    headers: tuple[tuple[str, str], ...] = ()  # ${NAME} in the file is taken from the environment


@dataclass(frozen=True)
class Action:
    """A built-in tool's effect, carried out by the call once the reply's words have been spoken."""

    kind: str  # end_call | transfer_call
    destination: str = ""  # transfer_call: the E.164 number


@dataclass(frozen=True)
class ToolResult:
    call: ToolCall
    content: str  # what the model is told
    action: Action | None = None
    failed: bool = False  # the operator's endpoint could not answer: the caller hears an apology


def transfer_spec(destinations: tuple[tuple[str, str], ...]) -> ToolSpec:
    names = [name for name, _ in destinations]
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    if len(names) > 1:
        parameters["properties"]["destination"] = {"type": "string", "enum": names,
                                                   "description": "who to transfer to"}
    return ToolSpec("transfer_call", "Transfer the caller to a person, when they ask for a human, an agent or "
                    "someone specific, or when you cannot help them.", parameters)


class Toolbox:
    def __init__(self, settings: Settings, http_tools: list[HttpTool]) -> None:
        self.destinations = dict(settings.transfer_destinations)
        self.http_tools = {tool.spec.name: tool for tool in http_tools}
        builtins = [END_CALL] + ([transfer_spec(settings.transfer_destinations)] if self.destinations else [])
        self.specs = [*builtins, *(tool.spec for tool in http_tools)]
        self._schemas = {spec.name: jsonschema.Draft202012Validator(spec.parameters) for spec in self.specs}

    async def run(self, call: ToolCall, call_sid: str, caller_number: str) -> ToolResult:
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            return ToolResult(call, "error: the arguments are not JSON")  # the model may try again
        if call.name not in self._schemas:
            log.warning("the model called an unknown tool %r", call.name[:64])
            return ToolResult(call, f"error: there is no tool named {call.name!r}")
        problems = [error.message for error in self._schemas[call.name].iter_errors(arguments)]
        if problems:
            log.warning("the model called %s with arguments that break its schema: %s", call.name, problems[0])
            return ToolResult(call, f"error: invalid arguments: {problems[0]}")
        if call.name == "end_call":
            return ToolResult(call, "ending the call", Action("end_call"))
        if call.name == "transfer_call":
            name = arguments.get("destination") or next(iter(self.destinations))
            return ToolResult(call, "transferring", Action("transfer_call", self.destinations[name]))
        return await self._call_http(self.http_tools[call.name], call, arguments, call_sid, caller_number)

    async def _call_http(self, tool: HttpTool, call: ToolCall, arguments: dict[str, Any], call_sid: str,
                         caller_number: str) -> ToolResult:
        sent = {**arguments, "caller_number": caller_number} if tool.send_caller_number else arguments
        headers = {**dict(tool.headers), "X-Voicepipe-Call-Sid": call_sid}
        options: dict[str, Any] = {"json": sent} if tool.method == "POST" else {
            "params": {k: v if isinstance(v, str) else json.dumps(v) for k, v in sent.items()}}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=tool.timeout_s)) as http, \
                    http.request(tool.method, tool.url, headers=headers, **options) as response:
                body = (await response.content.read(MAX_RESULT_CHARS * 4)).decode("utf-8", "replace")
                if response.status >= 400:
                    raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            log.warning("tool %s failed: %s (%s %s)", tool.spec.name, reason, tool.method, tool.url)
            return ToolResult(call, f"error: the tool failed ({reason})", failed=True)
        log.info("tool %s answered (%d characters)", tool.spec.name, len(body))
        return ToolResult(call, body[:MAX_RESULT_CHARS])


def load_tools_file(path: Path, environ: dict[str, str] | None = None) -> list[HttpTool]:
    """Read and check the operator's tools; a problem stops start-up with the file, the line and the reason."""
    environ = dict(os.environ) if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"VOICEPIPE_TOOLS_FILE={path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML or JSON ({getattr(exc, 'problem', exc)})") from None
    items, nodes = data, root
    if isinstance(data, dict):
        items = data.get("tools")
        nodes = next((value for key, value in root.value if key.value == "tools"), None) if root else None
    if not isinstance(items, list) or nodes is None:
        raise ConfigError(f"{path}:1: expected a list of tools (or `tools:` with a list)")
    tools: list[HttpTool] = []
    for index, (item, node) in enumerate(zip(items, nodes.value, strict=True)):
        where = f"{path}:{node.start_mark.line + 1}: tool {item.get('name', f'#{index + 1}') if isinstance(item, dict) else f'#{index + 1}'}"
        try:
            tools.append(_http_tool(item, environ))
        except (ValueError, TypeError, jsonschema.SchemaError) as exc:
            reason = exc.message if isinstance(exc, jsonschema.SchemaError) else str(exc)
            raise ConfigError(f"{where}: {reason}") from None
    names = [tool.spec.name for tool in tools]
    if len(set(names)) != len(names) or {"end_call", "transfer_call"} & set(names):
        raise ConfigError(f"{path}: tool names must be unique and not end_call or transfer_call (the built-ins)")
    return tools


def _http_tool(item: Any, environ: dict[str, str]) -> HttpTool:
    if not isinstance(item, dict):
        raise TypeError("each tool must be a mapping (name, description, parameters, method, url, ...)")
    known = {"name", "description", "parameters", "method", "url", "timeout_s", "send_caller_number", "headers"}
    if unknown := sorted(set(item) - known):
        raise ValueError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    name, description = item.get("name"), item.get("description")
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise ValueError("`name` must be 1-64 letters, digits, _ or -")
    if not isinstance(description, str) or not description.strip():
        raise ValueError("`description` must say what the tool does (the model reads it)")
    parameters = item.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise ValueError("`parameters` must be a JSON schema of type object")
    jsonschema.Draft202012Validator.check_schema(parameters)
    method = str(item.get("method", "POST")).upper()
    if method not in ("GET", "POST"):
        raise ValueError("`method` must be GET or POST")
    url = item.get("url")
    if not isinstance(url, str) or not re.match(r"https?://[^/\s]+", url):
        raise ValueError("`url` must be an http(s):// URL")
    timeout = item.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0.1 <= timeout <= MAX_TIMEOUT_S:
        raise ValueError(f"`timeout_s` must be a number of seconds from 0.1 to {MAX_TIMEOUT_S:.0f}")
    send_caller = item.get("send_caller_number", False)
    if not isinstance(send_caller, bool):
        raise TypeError("`send_caller_number` must be true or false")
    headers = item.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ValueError("`headers` must map names to strings")

    def expand(value: str) -> str:
        def lookup(match: re.Match[str]) -> str:
            if match.group(1) not in environ:
                raise ValueError(f"header value names ${{{match.group(1)}}}, which is not set in the environment")
            return environ[match.group(1)]

        return ENV_REFERENCE.sub(lookup, value)

    return HttpTool(ToolSpec(name, description.strip(), parameters), method, url, float(timeout), send_caller,
                    tuple((str(k), expand(v)) for k, v in headers.items()))


def build_toolbox(settings: Settings) -> Toolbox:
    return Toolbox(settings, load_tools_file(settings.tools_file) if settings.tools_file else [])
