#!/usr/bin/env bash
# Runs every check of the project: lint, format, and the whole pytest suite under a virtual
# display (napari's vispy canvas needs a real X server; QT_QPA_PLATFORM=offscreen does not work).
set -euo pipefail
. "$(dirname "$0")/_env.sh"

ensure_display_packages

cd "$ROOT"
echo "== ruff check"
ruff check .
echo "== ruff format --check"
ruff format --check .
echo "== pytest (under xvfb-run)"
set +e
# Two pytest-xdist workers, one test file each at a time (module fixtures are built once):
# many tests wait on `monai.bundle run` subprocesses and Qt, so 2 workers on 2 cores took the
# suite from 20.0 to 12.6 min. RA_JOINTS_TEST_WORKERS=0 runs it in one process.
xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest -n "${RA_JOINTS_TEST_WORKERS:-2}" \
    --dist loadfile --durations=25 "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
