#!/usr/bin/env bash
# System packages the tests need beyond setup.sh: espeak-ng speaks the Spanish test utterances.
set -euo pipefail
if command -v espeak-ng >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing espeak-ng (Spanish test speech)"
    apt-get install -y -q espeak-ng >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q espeak-ng >/dev/null; }
else
    echo "The tests need espeak-ng: sudo apt-get install espeak-ng" >&2
    exit 1
fi
