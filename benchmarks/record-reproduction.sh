#!/usr/bin/env bash
# Copy a finished `gmmkit reproduce --out SRC` into benchmarks/reproduction/NAME (REPRODUCTION.md; NAME: which
# recording, e.g. protocol-lr or paper-lr): the tables,
# claims, protocol, range test, the real batches' logs and every grid point's config.json, metrics.jsonl and
# summary.json; the figures as PNG (Debian's headless Chromium renders each HTML figure); no checkpoints,
# snapshots, event files or HTML (4.8 MB a figure). The folder is replaced only once the copy is complete.
set -euo pipefail
usage="usage: benchmarks/record-reproduction.sh SRC NAME (a finished gmmkit reproduce --out folder, the recording's name)"
src=${1:?$usage}
name=${2:?$usage}
case $name in */* | .* | "") echo "record-reproduction: NAME: a plain folder name, got '$name'" >&2; exit 2 ;; esac
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/reproduction"
dst=$here/reproduction/$name
[ -f "$src/claims.json" ] || { echo "record-reproduction: $src/claims.json: not found (is the reproduction finished?)" >&2; exit 2; }
command -v chromium >/dev/null || { echo "record-reproduction: chromium is needed to render the figures (apt-get install chromium)" >&2; exit 2; }
tmp=$(mktemp -d "$here/reproduction/.$name.XXXXXX")
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
cp "$src"/{claims.json,claims.md,protocol.json,reproduce.json,results.json,tables.md} "$tmp/"
mkdir -p "$tmp/logs" "$tmp/runs"
if [ -f "$src/lr_find/lr_find.json" ]; then  # none at a fixed eta (--lr): no range test ran
  mkdir -p "$tmp/lr_find" && cp "$src/lr_find/lr_find.json" "$tmp/lr_find/"
fi
for log in "$src"/logs/*.log; do  # the real batches' output, less TensorFlow's start-up notices
  [ -e "$log" ] || continue
  grep -v -e 'XLA service' -e 'StreamExecutor device' -e 'absl::InitializeLog' -e 'Compiled cluster using XLA' \
    -e 'SetPriority unimplemented' "$log" > "$tmp/logs/$(basename "$log")" || true
done
for run in "$src"/runs/*/; do
  point=$(basename "$run")
  mkdir -p "$tmp/runs/$point"
  cp "$run"/{config.json,metrics.jsonl,summary.json} "$tmp/runs/$point/"
done
for html in "$src"/fig*.html; do
  png=$tmp/$(basename "${html%.html}").png
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,650 \
    --virtual-time-budget=10000 --screenshot="$png" "file://$(realpath "$html")" 2>/dev/null
  [ -s "$png" ] || { echo "record-reproduction: $html: Chromium wrote no PNG" >&2; exit 1; }
done
rm -rf "$dst.old"
[ -d "$dst" ] && mv "$dst" "$dst.old"
mv "$tmp" "$dst"
rm -rf "$dst.old"
trap - EXIT
echo "recorded $(ls "$dst/runs" | wc -l) runs and $(ls "$dst"/fig*.png | wc -l) figures in $dst"
