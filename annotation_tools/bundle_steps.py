"""Run several ``python -m monai.bundle ...`` command lines in one Python process.

Why: on a 2-core machine importing torch and MONAI takes about 10 s, and an ultrasound
ensemble's retraining is 2 jigsaw runs plus 3 stages per fold - 8 or more processes whose
start-up alone costs over a minute. Here MONAI is imported once and each command line is parsed
by the same ``fire`` entry point as ``python -m monai.bundle``, so a step means exactly what
the printed command line would mean typed into a shell.

Usage: ``python -m annotation_tools.bundle_steps STEPS.json`` where the file holds a list of
command lines (each ``[python, "-m", "monai.bundle", "run", ...]``). Each step is announced
with ``running: <command line>`` (the retraining job counts steps by it); the first step that
fails stops the run with a non-zero exit code.
"""

from __future__ import annotations

import gc
import json
import shlex
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MONAI_BUNDLE", "main", "run_command"]

MONAI_BUNDLE = ("-m", "monai.bundle")


def run_command(command: Sequence[str]) -> None:
    """Run one ``python -m monai.bundle <sub-command> ...`` line in this process."""
    command = list(command)
    if tuple(command[1:3]) != MONAI_BUNDLE:
        raise ValueError(f"not a 'python -m monai.bundle' command line: {shlex.join(command)}")
    import fire
    import monai.bundle.__main__ as bundle_main

    # the names `python -m monai.bundle` exposes (run, verify_net_in_out, ckpt_export, ...)
    entry_points = {
        name: getattr(bundle_main, name)
        for name in dir(bundle_main)
        if not name.startswith("_") and callable(getattr(bundle_main, name))
    }
    fire.Fire(entry_points, command=command[3:], name="monai.bundle")


def main(argv: Sequence[str] | None = None) -> int:
    """Run every step of ``argv[0]`` (a JSON list of command lines) in order."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m annotation_tools.bundle_steps STEPS.json", file=sys.stderr)
        return 2
    steps = json.loads(Path(args[0]).read_text())
    for command in steps:
        print("running: " + " ".join(command), flush=True)
        try:
            run_command(command)
        except SystemExit as exc:  # fire exits on a bad argument; keep its code
            if exc.code not in (0, None):
                return exc.code if isinstance(exc.code, int) else 1
        except Exception:
            traceback.print_exc()
            print(f"step failed: {shlex.join(command)}", flush=True)
            return 1
        finally:
            gc.collect()  # free one step's datasets and networks before the next
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
