# Shared by scripts/run and scripts/test: where the build lives and how it is configured.
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${NORMSPEC_BUILD_DIR:-$top/build}
jobs=${NORMSPEC_JOBS:-$(nproc)}

configure() {
  cmake -S "$top" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
}
