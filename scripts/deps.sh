#!/usr/bin/env bash
# Install what bitplan needs on a Debian machine. Safe to run twice: it only
# installs what is missing. Why each dependency is there: see README.md.
set -euo pipefail

APT_PKGS=(
  build-essential pkg-config   # compiler, make
  libglpk-dev glpk-utils       # allocate/: exact MILP (glp_intopt); glpsol checks LP files
  libsqlite3-dev sqlite3       # db/: measurements and plans
  libopenblas-dev liblapack-dev  # dense products (BLAS) and Cholesky (LAPACK)
  libcmocka-dev                # tests/: C unit tests
  python3 python3-pip          # tests/: independent NumPy/gguf/tokenizers references
  chromium fonts-dejavu-core   # tests/: renders the HTML report headless (console errors, screenshots)
)
PY_PKGS=(numpy gguf tokenizers pytest)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
pymissing=()
for p in "${PY_PKGS[@]}"; do
  $PY -c "import $p" 2>/dev/null || pymissing+=("$p")
done
if [ ${#pymissing[@]} -gt 0 ]; then
  echo "deps: pip installing ${pymissing[*]}"
  $PY -m pip install -q "${pymissing[@]}" 2>/dev/null ||
    $PY -m pip install -q --break-system-packages "${pymissing[@]}"
fi
