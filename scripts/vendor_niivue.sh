#!/usr/bin/env bash
# Re-vendor Niivue (the viewer's rendering library) as one pinned built file.
#
#   scripts/vendor_niivue.sh [VERSION]      (default: the pinned version below)
#
# Fetches the npm package with `npm pack` into a temporary folder, copies its
# UMD bundle (dist/niivue.umd.js, global `niivue`, no further imports) into
# src/headct/viewer/static/vendor/, writes its licence beside it, and records
# the version and sha256 in VENDORED.md. The page then needs no internet.
set -euo pipefail

VERSION="${1:-0.69.0}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/src/headct/viewer/static/vendor"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

(cd "$WORK" && npm pack --silent "@niivue/niivue@$VERSION" >/dev/null)
tar -xzf "$WORK"/niivue-niivue-"$VERSION".tgz -C "$WORK"
LICENSE_ID="$(node -p "require('$WORK/package/package.json').license")"
[ "$LICENSE_ID" = "BSD-2-Clause" ] || { echo "licence changed to $LICENSE_ID: review before vendoring" >&2; exit 1; }

mkdir -p "$DEST"
cp "$WORK/package/dist/niivue.umd.js" "$DEST/niivue.umd.js"
if [ -f "$WORK/package/LICENSE" ]; then
  cp "$WORK/package/LICENSE" "$DEST/niivue.LICENSE"
else
  # The npm package declares BSD-2-Clause but ships no LICENSE file; this is the
  # upstream repository's (github.com/niivue/niivue/blob/main/LICENSE) text.
  cat > "$DEST/niivue.LICENSE" <<'LICENSE'
BSD 2-Clause License

Copyright (c) 2021, Niivue
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
LICENSE
fi

SHA="$(sha256sum "$DEST/niivue.umd.js" | cut -d' ' -f1)"
cat > "$DEST/VENDORED.md" <<MD
# Vendored files

| file | package | version | licence | sha256 |
|---|---|---|---|---|
| niivue.umd.js | @niivue/niivue (npm, dist/niivue.umd.js) | $VERSION | $LICENSE_ID (niivue.LICENSE) | $SHA |

Re-vendor with \`scripts/vendor_niivue.sh [VERSION]\` (needs npm and the registry once).
MD
echo "vendored @niivue/niivue@$VERSION: $SHA"
