"""Retraining as a job that outlives the viewer: its own process, a job file in the project.

A retraining takes minutes to hours; napari may be closed meanwhile, or crash. So the dock
does not train in a thread of its own: :func:`start_retrain` starts ``python -m
annotation_tools.jobs <job file>`` as a detached process (its own session and process group),
which runs :func:`annotation_tools.retrain.iter_retrain` to the end - export, every ``monai.bundle
run`` step, registering the new version - and keeps ``PROJECT/training/jobs/<id>.json`` up to
date: state, step, epoch, loss, validation figure, the version it made. Any later dock session
(or ``ra-joints jobs``) reads the job files: a finished job's version is listed, a running
one is followed again, a job whose process died is said to have died.

Cancel sends SIGTERM to the job's process group, so the training processes it started stop
with it (nothing is left orphaned); the earlier versions are untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .paths import write_text_atomic

__all__ = [
    "STATES",
    "RetrainJob",
    "filter_log",
    "jobs",
    "parse_progress",
    "start_retrain",
]

STATES = ("starting", "running", "done", "failed", "cancelled", "died")
FINAL = ("done", "failed", "cancelled", "died")
JOBS_DIR = ("training", "jobs")

# What MONAI's StatsHandler and the retrain steps print, as progress.
_EPOCH = re.compile(r"Epoch[:\[ ]\s*(\d+)\s*/\s*(\d+)")
_LOSS = re.compile(r"train_loss:\s*([-+\d.eE]+)")
_METRIC = re.compile(r"Got new best metric of (\w+):\s*([-+\d.eE]+)")
_CURRENT = re.compile(r"Key metric:\s*(\w+)\s+best value:\s*([-+\d.eE]+)")
_STEP = re.compile(r"^running: ")
# Library chatter a person need not read (kept in the full log file).
_NOISE = re.compile(
    r"(Warning|warnings\.warn|DeprecationWarning|FutureWarning|UserWarning|"
    r"^\s+warnings\.|GHSA-|is deprecated|torch\.jit)"
)


@dataclass
class RetrainJob:
    """What the job file holds; :meth:`read` and :meth:`write` keep it on disk."""

    id: str
    project: str
    bundle: str
    bundle_root: str
    quick: bool = True
    folds: int | None = None
    overrides: list[str] = field(default_factory=list)
    state: str = "starting"
    pid: int | None = None
    started: str = ""
    finished: str = ""
    step: int = 0
    steps: int = 0
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    metric_name: str = ""
    metric: float | None = None
    baseline: dict[str, Any] | None = None  # the validation figure of the version in use
    version: str = ""
    calibration: str = ""  # what the new version's calibration step gave (or why none)
    error: str = ""
    updated: float = 0.0

    # ------------------------------------------------------------------ files

    @property
    def path(self) -> Path:
        return Path(self.project).joinpath(*JOBS_DIR, f"{self.id}.json")

    @property
    def log_path(self) -> Path:
        return self.path.with_suffix(".log")

    @classmethod
    def read(cls, path: str | Path) -> RetrainJob:
        data = json.loads(Path(path).read_text())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self) -> None:
        """Atomic: a reader never sees half a job file."""
        self.updated = time.time()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(asdict(self), indent=1))

    def refresh(self) -> RetrainJob:
        """The job as its file says now; a running job whose process is gone has died."""
        fresh = RetrainJob.read(self.path)
        if fresh.state in ("starting", "running") and fresh.pid and not _alive(fresh.pid):
            fresh.state, fresh.error = "died", "the job's process ended without finishing"
            fresh.finished = fresh.finished or _now()
            fresh.write()
        return fresh

    # ------------------------------------------------------------------ questions

    @property
    def finished_ok(self) -> bool:
        return self.state == "done"

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running")

    def fraction(self) -> float:
        """Share of the work done: steps, and epochs within the current step."""
        if not self.steps:
            return 0.0
        within = self.epoch / self.epochs if self.epochs else 0.0
        return min(1.0, (max(self.step - 1, 0) + within) / self.steps)

    def eta_seconds(self) -> float | None:
        done = self.fraction()
        if not self.started or done <= 0.02 or not self.active:
            return None
        elapsed = time.time() - datetime.fromisoformat(self.started).timestamp()
        return elapsed * (1 - done) / done

    def summary(self) -> str:
        """One line for a person: what, how far, how good, how long still."""
        parts = [f"{self.bundle} {self.state}"]
        if self.steps:
            parts.append(f"step {self.step}/{self.steps}")
        if self.epochs:
            parts.append(f"epoch {self.epoch}/{self.epochs}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.metric is not None:
            text = f"validation {self.metric_name} {self.metric:.3f}"
            if self.baseline and self.baseline.get("metric") is not None:
                used = self.baseline
                text += f" (version in use {used['version']}: {used['metric']:.3f})"
            elif self.baseline:
                text += f" (version in use {self.baseline['version']}: not measured here)"
            parts.append(text)
        eta = self.eta_seconds()
        if eta is not None:
            parts.append(f"about {eta / 60:.0f} min left" if eta > 90 else f"{eta:.0f} s left")
        if self.version:
            parts.append(f"new version {self.version}")
        if self.calibration:
            parts.append(self.calibration)
        if self.error:
            parts.append(self.error.splitlines()[0])
        return ", ".join(parts)

    def tail(self, lines: int = 200, *, filtered: bool = True) -> list[str]:
        if not self.log_path.exists():
            return []
        text = self.log_path.read_text(errors="replace").splitlines()
        return (filter_log(text) if filtered else text)[-lines:]

    # ------------------------------------------------------------------ control

    def cancel(self) -> None:
        """Stop the job and every training process it started (its process group)."""
        if self.pid and _alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(self.pid), signal.SIGTERM)

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> RetrainJob:
        """Block until the job is final (for scripts and tests; the dock polls)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.refresh()
        while job.active or (job.pid and _alive(job.pid)):  # final, and its process gone
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {job.state} after {timeout} s")
            time.sleep(poll)
            job = job.refresh()
        return job


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # the dock that started a job reaps it when it ends
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (finished, not yet reaped by the dock that started it) counts as gone
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return status != "Z"
    except (OSError, IndexError):
        return True


def filter_log(lines: Iterable[str]) -> list[str]:
    """The log without library warnings (and the source line Python prints under each)."""
    out: list[str] = []
    skip_next = False
    for line in lines:
        if skip_next and line.startswith("  "):
            skip_next = False
            continue
        skip_next = False
        if _NOISE.search(line):
            skip_next = True
            continue
        out.append(line)
    return out


def parse_progress(job: RetrainJob, line: str) -> bool:
    """Update ``job`` from one log line; True when something changed."""
    if _STEP.match(line):
        job.step += 1
        job.epoch, job.epochs = 0, 0
        return True
    changed = False
    if m := _EPOCH.search(line):
        job.epoch, job.epochs = int(m.group(1)), int(m.group(2))
        changed = True
    if m := _LOSS.search(line):
        job.loss = float(m.group(1))
        changed = True
    if m := _METRIC.search(line) or _CURRENT.search(line):
        job.metric_name, job.metric = m.group(1), float(m.group(2))
        changed = True
    return changed


def jobs(project: str | Path) -> list[RetrainJob]:
    """Every retraining job of a project, oldest first, as their files say now."""
    folder = Path(project).joinpath(*JOBS_DIR)
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            out.append(RetrainJob.read(path).refresh())
        except (OSError, ValueError, TypeError):
            continue  # a foreign or broken file is not a job
    return out


def start_retrain(
    project: str | Path,
    bundle_root: str | Path,
    *,
    quick: bool = True,
    folds: int | None = None,
    overrides: Iterable[str] = (),
    baseline: dict[str, Any] | None = None,
    trusted: bool = False,
) -> RetrainJob:
    """Start a retraining in its own process (it survives the caller); returns its job.

    A bundle that is not a shipped one runs only with ``trusted=True``: training parses its
    configs, and MONAI configs are executable code.
    """
    from .bundles import BundleInfo, check_trusted
    from .retrain import job_steps

    project, root = Path(project).resolve(), Path(bundle_root).resolve()
    check_trusted(root, trusted)  # before any of its configs is read
    info = BundleInfo.read(root)
    if not info.retrainable:
        raise ValueError(f"{info.name} is not retrainable here; train it with its scripts")
    active = [j for j in jobs(project) if j.active and j.bundle == info.name]
    if active:
        raise RuntimeError(f"{info.name} is already being retrained (job {active[0].id})")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    job = RetrainJob(
        id=f"{stamp}_{info.name}",
        project=str(project),
        bundle=info.name,
        bundle_root=str(root),
        quick=quick,
        folds=folds,
        overrides=list(overrides),
        started=_now(),
        baseline=baseline,
    )
    job.steps = job_steps(root, quick=quick, folds=folds)  # training, then calibration
    job.write()
    with open(job.log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "annotation_tools.jobs", str(job.path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: closing napari does not stop it
            cwd=str(project),
        )
    job.pid = proc.pid
    job.write()
    return job


def run_job(path: str | Path) -> int:
    """The job process: retrain, keep the job file up to date, register the version."""
    from .retrain import iter_retrain

    job = RetrainJob.read(path)
    job.pid, job.state = os.getpid(), "running"
    job.write()

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    last_write = 0.0
    try:
        for line in iter_retrain(
            job.project,
            job.bundle_root,
            quick=job.quick,
            folds=job.folds,
            overrides=job.overrides,
        ):
            print(line, flush=True)
            if m := re.match(r"new \S+ version (\S+) in ", line):
                job.version = m.group(1)
            if parse_progress(job, line) and time.monotonic() - last_write > 0.5:
                job.write()
                last_write = time.monotonic()
        job.state = "done"
        _record_validation(job)
        job.calibration = _calibration_of(job)
    except KeyboardInterrupt:
        job.state, job.error = "cancelled", "cancelled by the person; earlier versions untouched"
    except Exception as exc:  # the job file must say why, whatever it was
        job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        print(job.error, flush=True)
    job.finished = _now()
    job.write()
    return 0 if job.state == "done" else 1


def _calibration_of(job: RetrainJob) -> str:
    """What the new version's calibration step recorded, one line (empty: it has none)."""
    if not job.version:
        return ""
    info = Path(job.project) / "models" / job.bundle / job.version / "train_info.json"
    try:
        return str(json.loads(info.read_text()).get("calibration", {}).get("message", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _record_validation(job: RetrainJob) -> None:
    """Keep the run's best validation figure with the version, so that the next retraining
    can be compared with it."""
    if not job.version or job.metric is None:
        return
    info = Path(job.project) / "models" / job.bundle / job.version / "train_info.json"
    data = json.loads(info.read_text())
    data["validation"] = {"metric": job.metric_name, "value": job.metric}
    info.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    code = run_job(sys.argv[1])
    sys.stdout.flush()
    os._exit(code)  # the job file and log are written; skip the slow interpreter teardown
