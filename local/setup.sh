#!/usr/bin/env bash
# `make setup`: create .venv with every pinned dependency (../shared/DESIGN.md
# section 3), build kaldifeat and KenLM's lmplz/build_binary from their PyPI
# source tarballs offline, and cache those builds outside the checkout so a
# second run (or CI on a fresh clone) does not rebuild them. k2 (CPU) is built
# from its source at a pinned commit the same way (DESIGN.md section 3).
#
# Environment: PYTHON (interpreter for the venv, default python3), VENV (default
# .venv), ASRHYBRID_CACHE (default ~/.cache/asrhybrid), JOBS (build jobs),
# K2_SOURCE (a k2 source archive or folder at K2_COMMIT; default: the cached
# archive, else GitHub's archive of the commit).
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
K2_COMMIT=a741ae88abc6995345aa166464a239b7d270dd4c  # 2025-07-14, k2 1.24.4

log() { echo "[setup $(date +%H:%M:%S)] $*"; }
# step N WHAT EXPECTED: a step of a cold set-up, with its time on 2 cores and an empty cache
# (docs/setup.md); step_end prints what the running step took (step calls it as the next starts).
step_start=$SECONDS; step_name=
step_end() {
  local took=$((SECONDS - step_start))
  [ -z "$step_name" ] || log "  ($step_name took $((took / 60)) min $((took % 60)) s)"
}
step() {
  step_end
  step_name=$2; step_start=$SECONDS
  log "step $1/6: $2 (${3})"
}
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

# --- 1. system packages (KenLM's builder needs boost; kaldifeat needs cmake) ---
step 1 "system packages" "seconds; minutes where apt-get installs"
debs=(cmake g++ make patch zlib1g-dev libbz2-dev liblzma-dev
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
  for tool in cmake g++ make patch; do
    command -v $tool >/dev/null || die "$tool not found; install it and boost (program_options, system, thread, test) development files"
  done
fi

# --- 2. the virtual environment and the pinned Python packages ---
step 2 "the virtual environment and the pinned Python packages" "about 2 min"
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)
# Every pip call carries the torch pin, so no dependency can pull a CUDA build.
CONSTRAINTS=(-c local/constraints.txt)
stamp="$VENV/.asrhybrid-setup"
want_stamp=$(cat pyproject.toml setup.py asrhybrid/decode/determinize.cpp local/setup.sh local/constraints.txt | sha1sum | cut -d' ' -f1)

# the package's compiled part (setup.py: the lattice determinizer) is built by the editable install, into the
# checkout; `git clean -X` removes it, so its absence reinstalls too
if [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ] || ! "$PY" -c "import asrhybrid.decode._determinize" 2>/dev/null; then
  "$PY" -c "import torch" 2>/dev/null || { log "installing torch==$TORCH_VERSION"; "${PIP[@]}" install "${CONSTRAINTS[@]}" "torch==$TORCH_VERSION"; }
  log "installing asrhybrid (compiling its lattice determinizer) and its pinned dependencies"
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
step 3 "kaldifeat $KALDIFEAT_VERSION from source" "about 5 min; seconds when cached"
kaldifeat_ok() { "$PY" -c "import kaldifeat, torch; kaldifeat.Fbank(kaldifeat.FbankOptions())" >/dev/null 2>&1; }
if ! kaldifeat_ok; then
  wheel_dir="$CACHE/kaldifeat-$KALDIFEAT_VERSION/torch-$torch_ver-$py_tag"
  if ! ls "$wheel_dir"/kaldifeat-*.whl >/dev/null 2>&1; then
    log "building kaldifeat $KALDIFEAT_VERSION against torch $torch_ver (cached in $wheel_dir)"
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

# --- 4. k2 (CPU) from source at K2_COMMIT. PyPI has k2 wheels only for old
#        Pythons and torches and no sdist; its CMake would download pybind11
#        and kaldifeat, so it gets PyPI's sdists of both: pybind11 at the
#        version torch bundles (they share pybind11's internals), kaldifeat's
#        C++ sources. One patch for pybind11 3 (local/k2-pybind11-pickle.patch). ---
step 4 "k2 ${K2_COMMIT:0:8} (CPU) from source" "about 7 min; seconds when cached"
k2_ok() { "$PY" -c "import k2; k2.Fsa.from_str('0 1 1 0.5\n1 2 -1 0\n2')" >/dev/null 2>&1; }
k2_source() {  # -> a folder holding k2's source at K2_COMMIT (a copy: the patch never touches K2_SOURCE)
  local dest=$1 archive
  if [ -n "${K2_SOURCE:-}" ]; then
    [ -e "$K2_SOURCE" ] || die "K2_SOURCE=$K2_SOURCE does not exist"
    if [ -d "$K2_SOURCE" ]; then cp -a "$K2_SOURCE/." "$dest/"; return; fi
    archive=$K2_SOURCE
  else
    archive="$CACHE/src/k2-$K2_COMMIT.tar.gz"
    if [ ! -f "$archive" ]; then
      local url="https://github.com/k2-fsa/k2/archive/$K2_COMMIT.tar.gz"
      log "downloading k2's source ($url); offline, set K2_SOURCE to a copy of that archive"
      "$PY" -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" "$url" "$archive.tmp" \
        || die "could not download $url; set K2_SOURCE to a k2 source archive or folder at commit $K2_COMMIT"
      mv "$archive.tmp" "$archive"
    fi
  fi
  tar -xzf "$archive" -C "$dest" --strip-components=1 || die "$archive is not a readable k2 source archive"
}
if ! k2_ok; then
  wheel_dir="$CACHE/k2-${K2_COMMIT:0:8}/torch-$torch_ver-$py_tag"
  if ! ls "$wheel_dir"/k2-*.whl >/dev/null 2>&1; then
    log "building k2 ${K2_COMMIT:0:8} (CPU) against torch $torch_ver (cached in $wheel_dir)"
    build_log="$CACHE/k2-build.log"
    src=$(mktemp -d "$CACHE/k2-src.XXXXXX")
    trap 'rm -rf "$src"' EXIT  # the copy goes whatever happens; the build log stays
    k2_source "$src"
    [ -f "$src/setup.py" ] && [ -d "$src/k2/csrc" ] \
      || die "${K2_SOURCE:-the k2 archive} does not look like k2's source at $K2_COMMIT (no setup.py, k2/csrc)"
    for patch_file in "$PWD"/local/k2-*.patch; do
      if ! (cd "$src" && patch -p1 -R -s -f --dry-run < "$patch_file" >/dev/null 2>&1); then  # not applied yet
        (cd "$src" && patch -p1 -N -s < "$patch_file") || die "$patch_file does not apply to $src"
      fi
    done
    torch_pybind11=$("$PY" - <<'PYEOF'
import re, torch, pathlib
h = (pathlib.Path(torch.__file__).parent / "include/pybind11/detail/common.h").read_text()
print(".".join(re.search(rf"#define PYBIND11_VERSION_{k} (\d+)", h).group(1) for k in ("MAJOR", "MINOR", "PATCH")))
PYEOF
)
    pb_sdist=$(fetch_sdist pybind11 "$torch_pybind11")
    [ -d "$CACHE/src/pybind11-$torch_pybind11" ] || tar -xzf "$pb_sdist" -C "$CACHE/src"
    rm -rf "$wheel_dir.tmp" && mkdir -p "$wheel_dir.tmp"
    # No k2/torch (local/k2-python-only.patch): that is what shortens the build. pybind11's link-time
    # optimisation of _k2 stays: without it the build took as long (docs/setup.md).
    K2_CMAKE_ARGS="-DK2_WITH_CUDA=OFF -DCMAKE_BUILD_TYPE=Release -DK2_ENABLE_TESTS=OFF -DK2_ENABLE_BENCHMARK=OFF -DK2_ENABLE_TORCH_API=OFF -DFETCHCONTENT_SOURCE_DIR_PYBIND11=$CACHE/src/pybind11-$torch_pybind11" \
      K2_MAKE_ARGS="-j$JOBS" MAKEFLAGS="-j$JOBS" \
      "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$wheel_dir.tmp" "$src" > "$build_log" 2>&1 \
      || { tail -n 20 "$build_log" >&2; die "k2 build failed; the whole log is $build_log"; }
    rm -rf "$wheel_dir" && mv "$wheel_dir.tmp" "$wheel_dir"
  fi
  "${PIP[@]}" install --no-deps --force-reinstall "$wheel_dir"/k2-*.whl
  k2_ok || die "k2 installed but does not work; run: $PY -c 'import k2'"
fi

# --- 5. KenLM's lmplz and build_binary (the PyPI module only queries models;
#        the same sdist holds lm/builder) ---
step 5 "KenLM's lmplz and build_binary" "about 1 min; none when cached"
kenlm_bin="$CACHE/kenlm-$KENLM_VERSION/bin"
if [ ! -x "$kenlm_bin/lmplz" ] || [ ! -x "$kenlm_bin/build_binary" ]; then
  log "building KenLM $KENLM_VERSION lmplz and build_binary (cached in $kenlm_bin)"
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

# --- 6. check the whole stack in a fresh process ---
step 6 "the installation check" "seconds"
"$VENV/bin/asrhybrid" check-install || die "the installation check failed"
echo "$want_stamp" > "$stamp"
step_end
log "done in $(( SECONDS / 60 )) min $(( SECONDS % 60 )) s: activate with 'source $VENV/bin/activate'"
