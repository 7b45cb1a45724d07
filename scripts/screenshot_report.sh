#!/usr/bin/env bash
# Screenshot an rl2 report.html with headless Chromium (Debian package `chromium`), fully offline.
#   scripts/screenshot_report.sh OUTDIR/report.html [out.png] [WIDTHxHEIGHT]
# Default: OUTDIR/report.png at 1400x3000. Network access is blocked on purpose: the report must
# render from its embedded data alone.
set -euo pipefail
html=$(realpath "${1:?usage: $0 report.html [out.png] [WIDTHxHEIGHT]}")
png=$(realpath -m "${2:-$(dirname "$html")/report.png}")
size=${3:-1400x3000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "no chromium found; apt-get install -y chromium" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
  --proxy-server="127.0.0.1:9" --proxy-bypass-list="<-loopback>" \
  --window-size="${size/x/,}" --screenshot="$png" "file://$html" >/dev/null 2>&1
[ -s "$png" ] || { echo "no screenshot written" >&2; exit 1; }
echo "$png"
