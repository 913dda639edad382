#!/usr/bin/env bash
# System packages the tests need beyond setup.sh: espeak-ng speaks the Spanish test utterances; Debian's
# chromium is the real browser the page tests drive through Playwright (Playwright's own browser download is
# not reachable from the build machines); nginx is the reverse proxy of the several-nodes tests.
set -euo pipefail
missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v chromium >/dev/null || missing+=(chromium)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} = 0 ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing ${missing[*]} (test speech, browser tests)"
    apt-get install -y -q "${missing[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
else
    echo "The tests need: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
