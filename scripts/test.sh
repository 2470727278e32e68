#!/usr/bin/env bash
# Runs every check of the project: lint, format, and the whole pytest suite under a virtual
# display (napari's vispy canvas needs a real X server; QT_QPA_PLATFORM=offscreen does not work).
set -euo pipefail
. "$(dirname "$0")/_env.sh"

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

cd "$ROOT"
echo "== ruff check"
ruff check .
echo "== ruff format --check"
ruff format --check .
echo "== pytest (under xvfb-run)"
set +e
xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
