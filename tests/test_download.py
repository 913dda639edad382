"""Model downloads against real local servers: a Hugging Face-like HTTP server (HF_ENDPOINT) and a local
wheel directory that pip reads (PIP_FIND_LINKS), with real huggingface_hub and pip doing the fetching."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.helpers import start_site
from voicepipe.engines.download import VERIFIED_FILE, DownloadError, download, load_manifest, model_files

WEIGHTS = bytes(range(256)) * 4000  # an "LFS" file: the hub publishes its sha256
CONFIG = b'{"layers": 2}\n'  # a small git file: the hub publishes its git blob sha1


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class FakeHub:
    """Serves /{repo}/resolve/{revision}/{path} the way the hub does, and counts the downloads."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.corrupt: set[str] = set()
        self.truncate: set[str] = set()
        self.gets: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if path not in self.files:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"})
        data = self.files[path]
        headers = {"X-Repo-Commit": "c" * 40, "Content-Length": str(len(data))}
        if path.endswith(".bin"):
            headers.update({"ETag": f'"{sha256(data)}"', "X-Linked-Etag": f'"{sha256(data)}"',
                            "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{git_sha1(data)}"'
        if request.method == "HEAD":
            return web.Response(headers=headers)
        self.gets.append(path)
        if path in self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await response.write(data[: len(data) // 2] if path in self.truncate else data)
        if path in self.truncate:
            request.transport.close()  # type: ignore[union-attr]
            return response
        await response.write_eof()
        return response


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    fake = FakeHub({"sub/weights.bin": WEIGHTS, "sub/config.json": CONFIG})
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", "/org/model/resolve/{revision}/{path:.*}", fake.handle)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    fake.url = f"http://127.0.0.1:{loop.run_until_complete(start_site(runner))}"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    yield fake
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.run_until_complete(runner.cleanup())


PINS = {"weights.bin": sha256(WEIGHTS), "config.json": sha256(CONFIG)}


def hub_manifest(pins: dict[str, str] | None = None) -> dict[str, Any]:
    """The test model, pinned as every hub model must be (`pins` replaces the true ones)."""
    pins = PINS if pins is None else pins
    return {"presets": {}, "models": {"tiny": {
        "files": {name: ({"sha256": pins[name]} if name in pins else {}) for name in ("weights.bin", "config.json")},
        "hub": {"repo": "org/model", "revision": "main", "prefix": "sub/"},
    }}}


def test_hub_download_verifies_and_is_not_repeated(hub: FakeHub, tmp_path: Path) -> None:
    download(["tiny"], tmp_path, "hub", manifest=hub_manifest())
    assert (tmp_path / "tiny" / "weights.bin").read_bytes() == WEIGHTS
    assert (tmp_path / "tiny" / "config.json").read_bytes() == CONFIG
    verified = json.loads((tmp_path / "tiny" / VERIFIED_FILE).read_text())
    assert verified["weights.bin"]["sha256"] == sha256(WEIGHTS)
    assert sorted(hub.gets) == ["sub/config.json", "sub/weights.bin"]
    download(["tiny"], tmp_path, "hub", manifest=hub_manifest())
    download(["tiny"], tmp_path, "hub", manifest=hub_manifest(), rehash=True)
    assert len(hub.gets) == 2  # present and verified: nothing fetched again


def test_a_changed_file_is_fetched_again(hub: FakeHub, tmp_path: Path) -> None:
    download(["tiny"], tmp_path, "hub", manifest=hub_manifest())
    (tmp_path / "tiny" / "weights.bin").write_bytes(b"damaged")
    download(["tiny"], tmp_path, "hub", manifest=hub_manifest())
    assert (tmp_path / "tiny" / "weights.bin").read_bytes() == WEIGHTS
    assert hub.gets.count("sub/weights.bin") == 2


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_a_bad_download_never_passes_as_a_model(hub: FakeHub, tmp_path: Path, fault: str) -> None:
    getattr(hub, fault).add("sub/weights.bin")
    with pytest.raises(DownloadError, match="weights.bin"):
        download(["tiny"], tmp_path, "hub", manifest=hub_manifest())
    leftovers = [p.name for p in (tmp_path / "tiny").iterdir()] if (tmp_path / "tiny").exists() else []
    assert "weights.bin" not in leftovers and not any(name.endswith(".part") for name in leftovers)


def test_a_manifest_pin_wins_over_the_hub(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="does not match the manifest"):
        download(["tiny"], tmp_path, "hub", manifest=hub_manifest({**PINS, "weights.bin": "0" * 64}))


def test_an_unpinned_hub_file_needs_the_operators_word(hub: FakeHub, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DownloadError, match="no sha256 pin.*--unpinned"):
        download(["tiny"], tmp_path, "hub", manifest=hub_manifest({}))
    assert hub.gets == []  # refused before anything was fetched
    download(["tiny"], tmp_path, "hub", manifest=hub_manifest({}), unpinned=True)  # the hub's hashes, checked
    assert (tmp_path / "tiny" / "weights.bin").read_bytes() == WEIGHTS
    printed = capsys.readouterr().out
    assert f'"sha256": "{sha256(WEIGHTS)}"' in printed and f'"sha256": "{sha256(CONFIG)}"' in printed


def test_a_corrupt_file_fails_its_hub_hash_when_unpinned(hub: FakeHub, tmp_path: Path) -> None:
    hub.corrupt.add("sub/weights.bin")
    with pytest.raises(DownloadError, match="does not match the hub"):
        download(["tiny"], tmp_path, "hub", manifest=hub_manifest({}), unpinned=True)


def test_the_hub_is_reached_over_https_only(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.example.com")
    with pytest.raises(DownloadError, match="HF_ENDPOINT.*https://"):
        download(["tiny"], tmp_path, "hub", manifest=hub_manifest())
    assert hub.gets == []


def test_missing_file_on_the_hub_names_it(hub: FakeHub, tmp_path: Path) -> None:
    del hub.files["sub/config.json"]
    with pytest.raises(DownloadError, match="config.json"):
        download(["tiny"], tmp_path, "hub", manifest=hub_manifest())


def make_wheel(directory: Path, name: str, files: dict[str, bytes]) -> None:
    package = name.replace("-", "_")
    dist_info = f"{package}-1.0.0.dist-info"
    with zipfile.ZipFile(directory / f"{package}-1.0.0-py3-none-any.whl", "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
        wheel.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n")
        wheel.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist_info}/RECORD", "")


def test_pypi_wheels_are_unpacked_and_parts_joined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "vp-model-part1", {"vp_model_part1/data/model.bin.part1": WEIGHTS[:1000],
                                          "vp_model_part1/data/config.json": CONFIG})
    make_wheel(wheels, "vp-model-part2", {"vp_model_part2/data/model.bin.part2": WEIGHTS[1000:]})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    manifest = {"presets": {}, "models": {"split": {
        "files": {"model.bin": {"sha256": sha256(WEIGHTS), "size": len(WEIGHTS)},
                  "config.json": {"sha256": sha256(CONFIG)}},
        "pypi": {"wheels": ["vp-model-part1==1.0.0", "vp-model-part2==1.0.0"], "files": {
            "model.bin": ["vp_model_part1/data/model.bin.part1", "vp_model_part2/data/model.bin.part2"],
            "config.json": ["vp_model_part1/data/config.json"]}},
    }}}
    download(["split"], tmp_path / "models", "pypi", manifest=manifest)
    assert (tmp_path / "models" / "split" / "model.bin").read_bytes() == WEIGHTS
    manifest["models"]["split"]["files"]["model.bin"]["sha256"] = "f" * 64
    (tmp_path / "models" / "split" / "model.bin").unlink()
    with pytest.raises(DownloadError, match="model.bin: sha256 .* does not match"):
        download(["split"], tmp_path / "models", "pypi", manifest=manifest)
    assert not (tmp_path / "models" / "split" / "model.bin").exists()


def test_unknown_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unknown model 'nope'"):
        download(["nope"], tmp_path, "pypi", manifest={"presets": {}, "models": {}})


def test_every_preset_fetches_pinned_bytes_or_a_pinned_commit() -> None:
    """What `download_models.py --preset X` fetches by default: PyPI wheels with every file pinned, or hub files
    pinned by sha256, or (for files nobody here could hash: the hub is unreachable) a commit revision."""
    manifest = load_manifest()
    for preset, models in manifest["presets"].items():
        for model in models:
            spec = manifest["models"][model]
            source = "pypi" if "pypi" in spec else "hub"
            files = model_files(manifest, model, source)
            revision = spec.get("hub", {}).get("revision", "")
            assert all(f.sha256 for f in files) or re.fullmatch(r"[0-9a-f]{40}", revision), (preset, model)
