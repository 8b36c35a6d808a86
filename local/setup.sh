#!/usr/bin/env bash
# `make setup`: create .venv with every pinned dependency (../shared/DESIGN.md
# section 3), build kaldifeat and KenLM's lmplz/build_binary from their PyPI
# source tarballs offline, and cache those builds outside the checkout so a
# second run (or CI on a fresh clone) does not rebuild them.
#
# Environment: PYTHON (interpreter for the venv, default python3), VENV (default
# .venv), ASRHYBRID_CACHE (default ~/.cache/asrhybrid), JOBS (build jobs).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CACHE=${ASRHYBRID_CACHE:-$HOME/.cache/asrhybrid}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
KALDIFEAT_VERSION=1.24
PYBIND11_VERSION=3.1.0
KENLM_VERSION=0.3.0
TORCH_VERSION=2.13.0

log() { echo "[setup $(date +%H:%M:%S)] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

# --- 1. system packages (KenLM's builder needs boost; kaldifeat needs cmake) ---
debs=(cmake g++ make zlib1g-dev libbz2-dev liblzma-dev
      libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev)
if command -v dpkg-query >/dev/null; then
  missing=()
  for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      log "installing system packages: ${missing[*]}"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      die "missing system packages; run:  sudo apt-get install -y ${missing[*]}"
    fi
  fi
else
  for tool in cmake g++ make; do
    command -v $tool >/dev/null || die "$tool not found; install it and boost (program_options, system, thread, test) development files"
  done
fi

# --- 2. the virtual environment and the pinned Python packages ---
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)
# Every pip call carries the torch pin, so no dependency can pull a CUDA build.
CONSTRAINTS=(-c local/constraints.txt)
stamp="$VENV/.asrhybrid-setup"
want_stamp=$(cat pyproject.toml local/setup.sh local/constraints.txt | sha1sum | cut -d' ' -f1)

if [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ]; then
  "$PY" -c "import torch" 2>/dev/null || { log "installing torch==$TORCH_VERSION"; "${PIP[@]}" install "${CONSTRAINTS[@]}" "torch==$TORCH_VERSION"; }
  log "installing asrhybrid and its pinned dependencies"
  "${PIP[@]}" install "${CONSTRAINTS[@]}" setuptools wheel
  "${PIP[@]}" install "${CONSTRAINTS[@]}" -e ".[dev]"
fi

py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
torch_ver=$("$PY" -c 'import torch; print(torch.__version__)')
mkdir -p "$CACHE/src"

fetch_sdist() {  # name version -> path of the sdist in the cache
  local name=$1 version=$2 f
  f=$(ls "$CACHE/src/$name-$version".tar.gz 2>/dev/null || true)
  if [ -z "$f" ]; then
    "${PIP[@]}" download --no-deps --no-binary "$name" -d "$CACHE/src" "$name==$version" >/dev/null
    f="$CACHE/src/$name-$version.tar.gz"
  fi
  [ -f "$f" ] || die "could not fetch the $name $version source tarball"
  echo "$f"
}

# --- 3. kaldifeat from source (PyPI has only an sdist; its CMake would fetch
#        pybind11 from the internet, so we hand it PyPI's pybind11 sdist) ---
kaldifeat_ok() { "$PY" -c "import kaldifeat, torch; kaldifeat.Fbank(kaldifeat.FbankOptions())" >/dev/null 2>&1; }
if ! kaldifeat_ok; then
  wheel_dir="$CACHE/kaldifeat-$KALDIFEAT_VERSION/torch-$torch_ver-$py_tag"
  if ! ls "$wheel_dir"/kaldifeat-*.whl >/dev/null 2>&1; then
    log "building kaldifeat $KALDIFEAT_VERSION against torch $torch_ver (about 6 min on 2 cores; cached in $wheel_dir)"
    sdist=$(fetch_sdist kaldifeat $KALDIFEAT_VERSION)
    pb_sdist=$(fetch_sdist pybind11 $PYBIND11_VERSION)
    pb_dir="$CACHE/src/pybind11-$PYBIND11_VERSION"
    [ -d "$pb_dir" ] || tar -xzf "$pb_sdist" -C "$CACHE/src"
    rm -rf "$wheel_dir.tmp" && mkdir -p "$wheel_dir.tmp"
    KALDIFEAT_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_STANDARD=17 -DFETCHCONTENT_SOURCE_DIR_PYBIND11=$pb_dir" \
      KALDIFEAT_MAKE_ARGS="-j$JOBS" MAKEFLAGS="-j$JOBS" \
      "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$wheel_dir.tmp" "$sdist" > "$CACHE/kaldifeat-build.log" 2>&1 \
      || die "kaldifeat build failed; see $CACHE/kaldifeat-build.log"
    rm -rf "$wheel_dir" && mv "$wheel_dir.tmp" "$wheel_dir"
  fi
  "${PIP[@]}" install --no-deps --force-reinstall "$wheel_dir"/kaldifeat-*.whl
  kaldifeat_ok || die "kaldifeat installed but does not import; run: $PY -c 'import kaldifeat'"
fi

# --- 4. KenLM's lmplz and build_binary (the PyPI module only queries models;
#        the same sdist holds lm/builder) ---
kenlm_bin="$CACHE/kenlm-$KENLM_VERSION/bin"
if [ ! -x "$kenlm_bin/lmplz" ] || [ ! -x "$kenlm_bin/build_binary" ]; then
  log "building KenLM $KENLM_VERSION lmplz and build_binary (about 1 min; cached in $kenlm_bin)"
  sdist=$(fetch_sdist kenlm $KENLM_VERSION)
  build=$(mktemp -d)
  tar -xzf "$sdist" -C "$build"
  src="$build/kenlm-$KENLM_VERSION"
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release > "$CACHE/kenlm-build.log" 2>&1 \
    && make -C "$src/build" -j"$JOBS" lmplz build_binary >> "$CACHE/kenlm-build.log" 2>&1 \
    || die "KenLM build failed; see $CACHE/kenlm-build.log"
  mkdir -p "$kenlm_bin.tmp"
  cp "$src/build/bin/lmplz" "$src/build/bin/build_binary" "$kenlm_bin.tmp/"
  rm -rf "$kenlm_bin" && mkdir -p "$(dirname "$kenlm_bin")" && mv "$kenlm_bin.tmp" "$kenlm_bin"
  rm -rf "$build"
fi
ln -sf "$kenlm_bin/lmplz" "$VENV/bin/lmplz"
ln -sf "$kenlm_bin/build_binary" "$VENV/bin/build_binary"

# --- 5. check the whole stack in a fresh process ---
"$VENV/bin/asrhybrid" check-install || die "the installation check failed"
echo "$want_stamp" > "$stamp"
log "done: activate with 'source $VENV/bin/activate'"
