#!/usr/bin/env bash
# Install what bitplan needs on a Debian machine. Safe to run twice: it only
# installs what is missing. Why each dependency is there: see README.md.
set -euo pipefail

APT_PKGS=(
  build-essential pkg-config   # compiler, make
  libglpk-dev glpk-utils       # allocate/: exact MILP (glp_intopt); glpsol checks LP files
  libsqlite3-dev sqlite3       # db/: measurements and plans
  libopenblas-dev liblapack-dev  # dense products (BLAS) and Cholesky (LAPACK)
  libxxhash-dev                # model/, pack/: XXH3-64 checksums of a packed file's tensors, verified on load
  libopenmpi-dev openmpi-bin   # par/: `mpirun -np N bitplan measure` splits the measurement across processes
  libcmocka-dev                # tests/: C unit tests
  clang                        # tests/fuzz/: the libFuzzer harnesses (make fuzz, and briefly in make test)
  python3 python3-pip          # tests/: independent NumPy/gguf/tokenizers references
  chromium fonts-dejavu-core   # tests/: renders the HTML report headless (console errors, screenshots)
  cmake ninja-build            # llama-cpp-python (the peer) compiles llama.cpp with CMake at pip install;
                               # with ninja on PATH scikit-build-core fetches no ninja wheel
)
PY_PKGS=(numpy gguf tokenizers pytest xxhash)  # xxhash: tests/test_verify.py checks the checksums independently

# Installs those of the named Debian packages that are not installed yet.
apt_install_missing() {
  local missing=() p SUDO=""
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}
apt_install_missing "${APT_PKGS[@]}"

# The fuzzers (make fuzz, tests/fuzz/) also need clang's libFuzzer runtime and its
# OpenMP library. clang only recommends the runtime, so the versioned packages that
# match the installed clang are asked for by name.
CLANG_MAJOR=$(clang --version | sed -nE 's/.*clang version ([0-9]+)\..*/\1/p' | head -1)
[ -n "$CLANG_MAJOR" ] || { echo "deps: cannot tell the version of clang: $(clang --version | head -1)" >&2; exit 1; }
apt_install_missing "libclang-rt-$CLANG_MAJOR-dev" "libomp-$CLANG_MAJOR-dev"

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

# The peer: llama-cpp-python, whose pip install compiles the llama.cpp it vendors
# (CPU only, ~3.5 min on 2 cores). Keep LLAMA_CPP_PY in step with
# scripts/llama-tools.sh, which builds llama.cpp's own tools from the same sdist.
LLAMA_CPP_PY=0.3.36
# The flags (scripts/ggml-flags.sh: this CPU's, AVX-512 only where it has it) are
# stored in the installed package: an install made for another CPU is made again.
# shellcheck source=scripts/ggml-flags.sh
. "$(dirname "$0")/ggml-flags.sh"
LLAMA_CMAKE_ARGS="${GGML_FLAGS[*]} -DLLAVA_BUILD=OFF"
llama_flags_file() { $PY -c "import os, llama_cpp; print(os.path.join(os.path.dirname(llama_cpp.__file__), '.bitplan-cmake-args'))"; }
if ! $PY -c "import sys, llama_cpp; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_PY')" 2>/dev/null ||
   [ "$(cat "$(llama_flags_file)" 2>/dev/null)" != "$LLAMA_CMAKE_ARGS" ]; then
  echo "deps: pip installing llama-cpp-python==$LLAMA_CPP_PY (compiles llama.cpp, a few minutes)"
  # LLAVA_BUILD=OFF skips the multimodal library (unused).
  export CMAKE_ARGS="$LLAMA_CMAKE_ARGS"
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
  # A Python marked externally managed (Debian's) needs --break-system-packages;
  # decided up front so that a failed compile is not run a second time.
  pipflags=()
  $PY -c "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))" &&
    pipflags+=(--break-system-packages)
  # Made again for other flags: only the package itself, never from pip's wheel cache
  # (which keys a built wheel by the sdist alone, whatever the flags).
  $PY -c "import llama_cpp" 2>/dev/null && pipflags+=(--force-reinstall --no-deps)
  log=$(mktemp)
  if ! $PY -m pip install -v "${pipflags[@]}" --no-cache-dir --no-binary llama-cpp-python \
       "llama-cpp-python==$LLAMA_CPP_PY" >"$log" 2>&1; then
    tail -40 "$log" >&2; echo "deps: llama-cpp-python failed to build (full log: $log)" >&2; exit 1
  fi
  rm -f "$log"
  $PY -c "import llama_cpp" || { echo "deps: llama_cpp does not import after install" >&2; exit 1; }
  echo "$LLAMA_CMAKE_ARGS" >"$(llama_flags_file)"
fi
