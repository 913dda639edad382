"""`voicepipe doctor`: check what a first call needs (configuration, model files, GPU, the server, the tunnel,
Twilio credentials, the LLM server) and print one line per finding, with the fix for each problem."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from voicepipe.config import ConfigError, Settings, load_settings
from voicepipe.engines.download import load_manifest, recorded_sha256, sha256_of

HTTP_TIMEOUT = 5.0


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok    {self.check}: {self.detail}"
        return f"FAIL  {self.check}: {self.detail}" + (f" -> {self.fix}" if self.fix else "")


def _get_json(url: str) -> dict[str, object]:
    """GET a JSON document; raises OSError/ValueError with the reason (TLS, refused, not JSON)."""
    request = urllib.request.Request(url, headers={"User-Agent": "voicepipe-doctor"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            body = response.read(100_000)
    except urllib.error.HTTPError as exc:
        if exc.code != 503:  # /healthz says 503 when a model is failing, with the same JSON
            raise
        body = exc.read(100_000)
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def check_models(settings: Settings) -> list[Finding]:
    """Each configured model file exists and matches the manifest's sha256 (or the one recorded at download)."""
    manifest = load_manifest()
    paths = {"stt": settings.stt_model_path, "tts": settings.tts_voice_path}
    if settings.uses_local_llm:
        paths["llm"] = settings.llm_model_path
    findings = []
    for role, path in paths.items():
        try:
            model = path.relative_to(settings.models_dir).parts[0]
        except ValueError:
            model = ""
        fix = f"python scripts/download_models.py --model {model}" if model in manifest["models"] else \
            "point the setting at an existing file"
        if not path.exists():
            findings.append(Finding(f"model {role}", False, f"{path} not found", fix))
            continue
        if model not in manifest["models"]:
            findings.append(Finding(f"model {role}", True, f"{path} (not in the manifest: not checksummed)"))
            continue
        recorded = recorded_sha256(settings.models_dir / model)
        bad = []
        for name, pin in manifest["models"][model]["files"].items():
            file = settings.models_dir / model / name
            expected = pin.get("sha256") or recorded.get(name)
            if not file.is_file():
                bad.append(f"{name} missing")
            elif expected and sha256_of(file) != expected:
                bad.append(f"{name} checksum mismatch")
        if bad:
            findings.append(Finding(f"model {role}", False, f"{model}: {', '.join(bad)}", fix))
        else:
            findings.append(Finding(f"model {role}", True, f"{model}: files present, checksums match"))
    return findings


def check_gpu(settings: Settings) -> Finding:
    from voicepipe.engines.models import gpu_status

    status = gpu_status()
    detail = (f"{status['cuda_devices']} CUDA device(s); llama.cpp GPU offload "
              f"{'yes' if status['llama_gpu_offload'] else 'no'}; onnxruntime CUDA "
              f"{'yes' if status['onnxruntime_cuda'] else 'no'}")
    if settings.device == "cuda" and not status["cuda_devices"]:
        return Finding("gpu", False, detail, "check nvidia-smi and the container's GPU reservation, or set "
                                             "VOICEPIPE_DEVICE=auto")
    if settings.device != "cpu" and status["cuda_devices"] and not all(status.values()):
        return Finding("gpu", False, detail, "build with Dockerfile.gpu (llama.cpp with CUDA, onnxruntime-gpu)")
    runs_on = "cpu" if settings.device == "cpu" or not status["cuda_devices"] else "cuda"
    return Finding("gpu", True, f"{detail}; models run on {runs_on}")


def check_server_and_tunnel(settings: Settings) -> list[Finding]:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    local_url = f"http://{host}:{settings.port}/healthz"
    try:
        local = _get_json(local_url)
    except (OSError, ValueError) as exc:
        local = {}
        server = Finding("server", False, f"no voicepipe answers at {local_url} ({_reason(exc)})",
                         "start it: make run (or voicepipe serve)")
    else:
        server = Finding("server", local.get("status") == "ok", f"{local_url}: status {local.get('status')}, "
                         f"{local.get('active_calls')} active call(s), on {local.get('device')}",
                         f"a model is failing: {local.get('failing')}; see the server's log")
    if not settings.webhook_url:
        return [server, Finding("webhook", False, "WEBHOOK_URL is not set: Twilio cannot reach this server",
                                "start a tunnel (cloudflared/ngrok) and set WEBHOOK_URL to its https:// URL")]
    public_url = f"{settings.webhook_url}/healthz"
    try:
        public = _get_json(public_url)
    except (urllib.error.HTTPError, ValueError) as exc:  # something answered, but not voicepipe's /healthz
        public = {"answer": _reason(exc)}
    except OSError as exc:
        return [server, Finding("webhook", False, f"{public_url} is unreachable ({_reason(exc)})",
                                "check that the tunnel runs and forwards to this server's port")]
    if "instance" not in public:
        answer = f" ({public['answer']})" if "answer" in public else ""
        return [server, Finding("webhook", False, f"{public_url} answers{answer}, but not as voicepipe",
                                "point the tunnel at voicepipe's port")]
    if local and public["instance"] != local.get("instance"):
        return [server, Finding("webhook", False, f"{public_url} reaches another voicepipe, not this one",
                                "point the tunnel at this server")]
    if not local:
        return [server, Finding("webhook", True, f"{public_url} reaches a voicepipe (not one on this machine's port)")]
    return [server, Finding("webhook", True, f"{public_url} reaches this server")]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def check_twilio(settings: Settings) -> list[Finding]:
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        return [Finding("twilio", True, "no credentials set: unsigned mode, loopback only; calls cannot be placed")]
    from twilio.base.exceptions import TwilioException, TwilioRestException

    from voicepipe.telephony.rest import check_number, twilio_client

    client = twilio_client(settings)
    try:
        account = client.api.accounts(settings.twilio_account_sid).fetch()
    except TwilioRestException as exc:
        return [Finding("twilio", False, f"credentials rejected ({exc.status}: {exc.msg})",
                        "copy TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN again from the Twilio console")]
    except (TwilioException, OSError) as exc:
        return [Finding("twilio", False, f"Twilio's API is unreachable ({exc})", "check the network")]
    findings = [Finding("twilio", True, f"credentials work (account {account.friendly_name!r}, {account.status})")]
    if settings.twilio_phone_number:
        try:
            number = check_number(settings.twilio_phone_number, "TWILIO_PHONE_NUMBER")
            owned = client.incoming_phone_numbers.list(phone_number=number, limit=1)
        except ConfigError as exc:
            findings.append(Finding("twilio number", False, str(exc), "write it as +<country><number>"))
        except (TwilioException, OSError) as exc:
            findings.append(Finding("twilio number", False, f"could not look it up ({exc})", "check the network"))
        else:
            findings.append(Finding("twilio number", bool(owned), f"{number} "
                                    + ("belongs to this account" if owned else "is not a number of this account"),
                                    "set TWILIO_PHONE_NUMBER to one of the account's numbers"))
    return findings


def check_llm_server(settings: Settings) -> list[Finding]:
    if not settings.uses_llm_server:
        return []
    from openai import OpenAIError

    from voicepipe.engines.llm_backends import server_host
    from voicepipe.engines.models import server_chat

    where = server_host(settings.openai_base_url) if settings.openai_base_url else "OpenAI"
    try:
        served = asyncio.run(server_chat(settings).served_models(HTTP_TIMEOUT))
    except OpenAIError as exc:
        return [Finding("llm server", False, f"{where}: {exc}", "check VOICEPIPE_OPENAI_BASE_URL / OPENAI_API_KEY")]
    if served and settings.openai_model not in served:
        return [Finding("llm server", False, f"{where} does not serve {settings.openai_model!r} "
                        f"(it serves: {', '.join(served[:5])})", "set VOICEPIPE_OPENAI_MODEL to one of them")]
    return [Finding("llm server", True, f"{where} serves {settings.openai_model!r}")]


def check_shared_stores(settings: Settings) -> list[Finding]:
    """Redis and PostgreSQL, when the node is configured for a cluster: reachable, and the schema migrated."""
    findings = []
    if settings.redis_url:
        import redis

        where = urlsplit(settings.redis_url).hostname or "?"
        try:
            redis.Redis.from_url(settings.redis_url, socket_connect_timeout=HTTP_TIMEOUT).ping()
            findings.append(Finding("redis", True, f"{where} answers (stream tokens and capacity are shared)"))
        except redis.RedisError as exc:
            findings.append(Finding("redis", False, f"{where}: {exc}", "check VOICEPIPE_REDIS_URL and that Redis runs"))
    if settings.database_url:
        import psycopg

        from voicepipe.service.records_pg import MIGRATIONS, server_of

        where = server_of(settings.database_url)
        try:
            with psycopg.connect(settings.database_url, connect_timeout=int(HTTP_TIMEOUT)) as db:
                versions = [row[0] for row in db.execute("SELECT version FROM voicepipe_schema ORDER BY version")]
        except psycopg.errors.UndefinedTable:
            versions = []
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())  # psycopg's messages span lines
            return [*findings, Finding("postgresql", False, f"{where}: {reason}",
                                       "check VOICEPIPE_DATABASE_URL and that PostgreSQL runs")]
        latest = MIGRATIONS[-1][0]
        if versions and versions[-1] >= latest:
            findings.append(Finding("postgresql", True, f"{where}: call records, schema version {versions[-1]}"))
        else:
            findings.append(Finding("postgresql", True, f"{where} answers; the schema (version {latest}) is created "
                                    "when the first node starts"))
    return findings


def run_doctor(load: Callable[[], Settings] = load_settings, report: Callable[[str], None] = print) -> bool:
    """Print one line per check; True when nothing needs fixing."""
    try:
        settings = load()
    except ConfigError as exc:
        report(Finding("config", False, str(exc), "fix the setting in .env or the environment").line())
        return False
    findings = [Finding("config", True, f"settings load (language {settings.say_language}, LLM backend "
                                        f"{settings.llm_backend}, device {settings.device})")]
    findings += check_models(settings)
    findings.append(check_gpu(settings))
    findings += check_server_and_tunnel(settings)
    findings += check_twilio(settings)
    findings += check_llm_server(settings)
    findings += check_shared_stores(settings)
    for finding in findings:
        report(finding.line())
    problems = [f for f in findings if not f.ok]
    report(f"{len(problems)} problem(s)" if problems else "all checks passed")
    return not problems
