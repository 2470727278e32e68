# Shared by scripts/demo.sh and scripts/test.sh: create or update the project's virtual
# environment in .venv. Sourced, not run. CPU torch is installed first and on its own because
# an unpinned torch from the default index pulls a multi-GB CUDA stack.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RA_JOINTS_VENV:-$ROOT/.venv}"
TORCH_SPEC="${RA_JOINTS_TORCH:-torch==2.13.0}"
EXTRAS="${RA_JOINTS_EXTRAS:-test}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    # Installs Debian packages when we are root (or have sudo); otherwise says what is missing.
    if [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; then
        as_root apt-get update -q
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "$@"
    else
        echo "error: please install these system packages first: $*" >&2
        exit 1
    fi
}

# napari needs an X server: Xvfb and Qt's system libraries (the tests and the demo's screenshot).
ensure_display_packages() {
    QT_LIBS=(xvfb xauth libgl1-mesa-dri libegl1 libdbus-1-3 libfontconfig1 libxkbcommon-x11-0
        libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
        libxcb-xinerama0 libxcb-xkb1 libxcb-shape0 libxcb-cursor0)
    missing=()
    for pkg in "${QT_LIBS[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "== installing system packages for the virtual display: ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: napari-ra-joints needs Python >= 3.10 ($PY is $("$PY" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
        apt_install python3-venv
        rm -rf "$VENV"
        "$PY" -m venv "$VENV"
    fi
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

# Reinstall only when the dependency list changed since the last successful install.
STAMP="$VENV/.ra-joints-installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) $TORCH_SPEC $EXTRAS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "== installing napari-ra-joints into $VENV"
    python -m pip install -q --upgrade pip
    python -m pip install -q "$TORCH_SPEC"
    python -m pip install -q -e "$ROOT[$EXTRAS]"
    echo "$WANT" > "$STAMP"
fi
