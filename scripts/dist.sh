#!/usr/bin/env bash
# Builds every release artifact into target/dist/ (docs/PACKAGING.md), from ONE release build:
#   tally                                the stripped binary (`tally --version` names the commit)
#   tally_VER_ARCH.deb                   binary, man pages, shell completions
#   tally-host_… tally-agent_… tally-authority_…   the services (unit, user, /etc, /var/lib)
#   libtally0_… libtally-dev_…           the C SDK as packages (runtime / development)
#   tally-sdk-VER-linux-ARCH.tar.gz      the C SDK under a relocatable prefix
#   tally-VER-*-abi3-*.whl               the Python wheel (maturin; its own cargo build)
#   SHA256SUMS
# Usage: scripts/dist.sh [--no-wheel] [--no-build]. --no-build packages the release build already
# in target/release (CI builds it once with `cargo test --workspace --release --no-run`). Needs cargo-deb (installed when missing) and, for the
# wheel, maturin (`pip install maturin`). TALLY_DIST_DIR moves the output; TALLY_COMMIT names
# the commit when building outside a git checkout (else "unknown").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

wheel=1
build=1
for arg in "$@"; do
  case "$arg" in
    --no-wheel) wheel=0 ;;
    --no-build) build=0 ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "dist: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

step() { echo "dist: $*"; }
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
release="$target_dir/release"
dist="${TALLY_DIST_DIR:-$target_dir/dist}"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
major=${version%%.*}
minor=${version#*.}; minor=${minor%%.*}
# The C ABI major (crates/tally-ffi/build.rs): the SONAME is libtally.so.$abi.
abi=$(sed -n 's/^const ABI_MAJOR: u32 = \([0-9]*\);$/\1/p' crates/tally-ffi/build.rs)
arch=$(uname -m)
if [ -z "${TALLY_COMMIT:-}" ]; then
  TALLY_COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
fi
export TALLY_COMMIT

if ! cargo deb --version >/dev/null 2>&1; then
  step "installing cargo-deb"
  cargo install cargo-deb --locked
fi
if ((wheel)) && ! command -v maturin >/dev/null 2>&1; then
  echo "dist: maturin is missing (pip install maturin), or pass --no-wheel" >&2
  exit 1
fi

if ((build)); then
  start=$SECONDS
  step "cargo build --release (tally, libtally) at commit $TALLY_COMMIT"
  cargo build --release --locked -p tally-cli -p tally-ffi
  step "release build: $((SECONDS - start)) s"
else
  for f in tally libtally.so libtally.a; do
    if [ ! -f "$release/$f" ]; then
      echo "dist: --no-build, but $release/$f is missing (cargo build --release -p tally-cli -p tally-ffi; cargo test --no-run leaves libraries in $release/deps/)" >&2
      exit 1
    fi
    # A library built since (by cargo test, which does not copy it up) makes this one stale.
    if [ "$release/deps/$f" -nt "$release/$f" ]; then
      echo "dist: --no-build, but $release/$f is older than $release/deps/$f (cargo build --release -p tally-cli -p tally-ffi copies it up)" >&2
      exit 1
    fi
  done
  step "using the release build in $release"
fi

rm -rf "$dist"
mkdir -p "$dist"
cp "$release/tally" "$dist/tally"
"$dist/tally" --version

step "man pages and completions"
gen="$release/tally-gen"
rm -rf "$gen"
"$release/tally" generate man "$gen/man" >/dev/null
gzip -9n "$gen"/man/*.1
"$release/tally" generate completions "$gen/completions" >/dev/null

step "C SDK (libtally.so.$abi, libtally.a, tally.h, pkg-config, CMake)"
sdk="$release/tally-sdk"
rm -rf "$sdk"
mkdir -p "$sdk/include" "$sdk/lib/pkgconfig" "$sdk/lib/cmake/Tally" "$sdk/share/doc/tally/examples"
if ! readelf -d "$release/libtally.so" | grep -q "SONAME.*\[libtally.so.$abi\]"; then
  echo "dist: $release/libtally.so has no SONAME libtally.so.$abi (crates/tally-ffi/build.rs)" >&2
  exit 1
fi
install -m 0644 "$release/libtally.so" "$sdk/lib/libtally.so.$version"
ln -s "libtally.so.$version" "$sdk/lib/libtally.so.$abi"
ln -s "libtally.so.$abi" "$sdk/lib/libtally.so"
install -m 0644 "$release/libtally.a" "$sdk/lib/libtally.a"
strip --strip-debug "$sdk/lib/libtally.a"
install -m 0644 crates/tally-ffi/include/tally.h "$sdk/include/tally.h"
# What `rustc --print native-static-libs` lists for a staticlib on Linux.
native_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
native_cmake="gcc_s;util;rt;pthread;m;dl;c"
subst() {
  sed -e "s|@VERSION@|$version|g" -e "s|@ABI@|$abi|g" -e "s|@MAJOR@|$major|g" \
    -e "s|@MINOR@|$minor|g" -e "s|@NATIVE_LIBS@|$native_libs|g" \
    -e "s|@NATIVE_LIBS_CMAKE@|$native_cmake|g" "$1" >"$2"
}
subst dist/sdk/tally.pc.in "$sdk/lib/pkgconfig/tally.pc"
subst dist/sdk/tally-static.pc.in "$sdk/lib/pkgconfig/tally-static.pc"
subst dist/sdk/TallyConfig.cmake.in "$sdk/lib/cmake/Tally/TallyConfig.cmake"
subst dist/sdk/TallyConfigVersion.cmake.in "$sdk/lib/cmake/Tally/TallyConfigVersion.cmake"
install -m 0644 docs/EMBEDDING.md "$sdk/share/doc/tally/EMBEDDING.md"
cp -r examples/. "$sdk/share/doc/tally/examples/"
sdk_name="tally-sdk-$version-linux-$arch"
tar --owner=0 --group=0 --numeric-owner --sort=name -czf "$dist/$sdk_name.tar.gz" \
  --transform "s|^\.|$sdk_name|" -C "$sdk" .

step "Debian packages (cargo-deb)"
deb() {
  cargo deb --no-build --no-strip --locked --output "$dist" "$@" | tail -1
}
deb -p tally-cli
deb -p tally-cli --variant host
deb -p tally-cli --variant agent
deb -p tally-cli --variant authority
deb -p tally-ffi
deb -p tally-ffi --variant dev

if ((wheel)); then
  step "Python wheel (maturin, abi3)"
  start=$SECONDS
  # Its own cargo workspace (bindings/python/Cargo.toml) and its own target directory: built in
  # target/ it rebuilt dependencies of the release build in place (same file names, new
  # mtimes), so the tests that run next recompiled half the tree.
  CARGO_TARGET_DIR="$target_dir/wheel" maturin build --release --locked \
    --manifest-path bindings/python/Cargo.toml --out "$dist"
  ls "$dist"/*.whl >/dev/null
  step "wheel build: $((SECONDS - start)) s"
fi

step "SHA256SUMS"
(cd "$dist" && find . -maxdepth 1 -type f ! -name SHA256SUMS -printf '%f\n' | sort \
  | xargs sha256sum >SHA256SUMS)
(cd "$dist" && sha256sum --check --quiet SHA256SUMS)
step "done: $dist"
(cd "$dist" && ls -l --block-size=1 | awk 'NR > 1 { printf "dist:   %10d  %s\n", $5, $9 }')
