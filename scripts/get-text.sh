#!/usr/bin/env bash
# Fetches the real text bitplan calibrates and evaluates on, as plain UTF-8 files
# under data/ (git-ignored), from two Debian packages downloaded (never installed):
#   python3.11-doc      reStructuredText sources of the Python documentation
#                       -> data/python-doc/<path with / as _>.txt
#   r-cran-janeaustenr  Jane Austen's six novels inside R's Rdata.rdb
#                       -> data/austen/<novel>.txt (scripts/rdata-text.py)
# and two convenience files:
#   data/calib.txt      the Python docs, then five novels (calibration text)
#   data/heldout.txt    Persuasion, never used for calibration
# Idempotent: does nothing when data/ already holds every file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NOVELS="sensesensibility=sense_and_sensibility.txt prideprejudice=pride_and_prejudice.txt
mansfieldpark=mansfield_park.txt emma=emma.txt northangerabbey=northanger_abbey.txt persuasion=persuasion.txt"
CALIB_NOVELS="sense_and_sensibility pride_and_prejudice mansfield_park emma northanger_abbey"

complete() {
    [ -s data/calib.txt ] && [ -s data/heldout.txt ] && [ -s data/python-doc/contents.txt ] || return 1
    local n
    for n in $CALIB_NOVELS persuasion; do [ -s "data/austen/$n.txt" ] || return 1; done
}
if complete; then exit 0; fi

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for pkg in python3.11-doc r-cran-janeaustenr; do
    apt-cache show "$pkg" >/dev/null 2>&1 || { echo "get-text: apt does not know $pkg; running apt-get update"; apt-get update -qq; }
done
echo "get-text: downloading python3.11-doc r-cran-janeaustenr"
if ! (cd "$tmp" && apt-get download -qq python3.11-doc r-cran-janeaustenr 2>/dev/null); then
    echo "get-text: download failed; running apt-get update and trying again"
    apt-get update -qq
    (cd "$tmp" && apt-get download -qq python3.11-doc r-cran-janeaustenr)
fi
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done

# Python docs: every _sources/**/*.rst.txt, named by its path under _sources.
src="$tmp/root/usr/share/doc/python3.11/html/_sources"
[ -d "$src" ] || { echo "get-text: no _sources folder in python3.11-doc" >&2; exit 1; }
rm -rf data/python-doc.part && mkdir -p data/python-doc.part
(cd "$src" && find . -name '*.rst.txt' | sed 's|^\./||' | LC_ALL=C sort) >"$tmp/docs.lst"
while IFS= read -r f; do
    name=${f%.rst.txt}
    cp "$src/$f" "data/python-doc.part/${name//\//_}.txt"
done <"$tmp/docs.lst"
rm -rf data/python-doc && mv data/python-doc.part data/python-doc
echo "get-text: data/python-doc/ ($(wc -l <"$tmp/docs.lst") files, $(du -sh data/python-doc | cut -f1))"

# Austen: the character vectors of janeaustenr's data.
rdata=$(find "$tmp/root" -path '*janeaustenr/data/Rdata.rdb' | head -1)
[ -n "$rdata" ] || { echo "get-text: no data/Rdata.rdb in r-cran-janeaustenr" >&2; exit 1; }
# shellcheck disable=SC2086
$PY scripts/rdata-text.py "${rdata%.rdb}" data/austen $NOVELS

# Convenience files: every document ends with a newline, documents are joined as is.
{
    while IFS= read -r f; do name=${f%.rst.txt}; cat "data/python-doc/${name//\//_}.txt"; done <"$tmp/docs.lst"
    for n in $CALIB_NOVELS; do cat "data/austen/$n.txt"; done
} >data/calib.txt.part
mv data/calib.txt.part data/calib.txt
cp data/austen/persuasion.txt data/heldout.txt.part && mv data/heldout.txt.part data/heldout.txt
echo "get-text: data/calib.txt ($(du -h data/calib.txt | cut -f1)), data/heldout.txt ($(du -h data/heldout.txt | cut -f1))"
