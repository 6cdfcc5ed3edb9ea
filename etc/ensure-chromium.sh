#!/usr/bin/env bash
# Make sure headless Chromium and a font are installed (Debian): tests/test_report.py
# opens the page of `specprod-db report` in it (screenshot, images rendered).  Nothing
# here runs a browser.
set -euo pipefail

chromium="${CHROMIUM:-/usr/bin/chromium}"
# a font for the page's text (chromium itself only recommends one)
font="/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
packages="chromium fonts-dejavu-core"

if [[ -x "$chromium" && -f "$font" ]]; then
    exit 0
fi

echo "ensure-chromium: missing ${chromium} or ${font}; need Debian packages: ${packages}" >&2
if [[ "$(id -u)" != 0 ]]; then
    echo "ensure-chromium: not root, so not installing. Run as root:" >&2
    echo "    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ${packages}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
timeout 600 apt-get update -q
# shellcheck disable=SC2086
timeout 1200 apt-get install -y -q --no-install-recommends $packages </dev/null

if [[ ! -x "$chromium" || ! -f "$font" ]]; then
    echo "ensure-chromium: installed ${packages} but ${chromium} or ${font} is still missing" >&2
    exit 1
fi
