#!/usr/bin/env bash
# Builds a real-text word2vec corpus from two Debian packages, one sentence per line:
#   - bible-kjv: every verse of the King James Bible (`bible -f`), its reference ("Ge1:1") removed;
#   - wordnet-base: every gloss of WordNet 3.0 (the text after " | " on each line of
#     /usr/share/wordnet/data.{noun,verb,adj,adv}).
# Text is lowercased; punctuation other than apostrophes becomes spaces; blank lines are dropped.
# Apostrophes standing alone (not touching a letter or digit) go too. About 2.3 million words in
# 149,000 lines.
#
# Usage: benches/word2vec_corpus.sh OUT
#
# Idempotent: the same packages give the same bytes, written to OUT.tmp and renamed over OUT.
# No network, except apt-get when a package is missing and we run as root (otherwise it says
# what to install and exits 1).
set -euo pipefail

if [[ $# -ne 1 || $1 == -h || $1 == --help ]]; then
    echo "usage: $0 OUT   (writes the KJV Bible and WordNet glosses to OUT, one sentence per line)" >&2
    exit 2
fi
out=$1
wordnet=/usr/share/wordnet

missing=()
command -v bible >/dev/null 2>&1 || missing+=(bible-kjv)
[[ -r $wordnet/data.noun ]] || missing+=(wordnet-base)
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${missing[*]} with apt-get" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "error: missing ${missing[*]}: install with 'sudo apt-get install ${missing[*]}' (Debian/Ubuntu)" >&2
        exit 1
    fi
fi

# Byte-wise character classes whatever the user's locale (both sources are ASCII).
export LC_ALL=C
tmp=$out.tmp
trap 'rm -f "$tmp"' EXIT
{
    # "Ge1:1 In the beginning ...", "1Cor13:4 Charity ...", "SSol1:1 The song ...": one verse a line.
    bible -f "gen1:1-rev22:21" | sed -E 's/^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ //'
    # Data lines start with an 8-digit offset (the licence header lines start with spaces).
    for pos in noun verb adj adv; do
        grep -E '^[0-9]{8} ' "$wordnet/data.$pos" | sed -n 's/^[^|]* | //p'
    done
} | tr 'A-Z' 'a-z' | sed -E "s/[^'[:alnum:][:space:]]/ /g; s/(^|[^[:alnum:]])'+([^[:alnum:]]|$)/\\1 \\2/g;
        s/(^|[^[:alnum:]])'+([^[:alnum:]]|$)/\\1 \\2/g; s/[[:space:]]+/ /g; s/^ //; s/ $//; /^$/d" >"$tmp"
mv "$tmp" "$out"
trap - EXIT

read -r lines words _ < <(wc -lw "$out")
verses=$(bible -f "gen1:1-rev22:21" | wc -l)
echo "$out: $words words in $lines lines ($verses verses and $((lines - verses)) glosses)"
