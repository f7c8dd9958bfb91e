"""The web app's workspace and job queue: trainings and generations run as `motiontune` command-line processes,
one at a time, each recorded on disk (`jobs/<id>/job.json`, its log beside it), so a page reload or an app restart
finds every job as it was. A job that was running when the app stopped is marked `interrupted`; queued jobs run
when the app starts again.

Workspace layout: `uploads/<id>/` (validated uploads: clips with their captions, or subject images with their
masks), `examples/` (the bundled ShapeWorld clips and subject), `adapters/<name>/` (training runs:
`adapter.safetensors`, `training_log.jsonl`), `videos/` (generations), `jobs/`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputError
from ..io.data import MIN_VIDEO_SIDE, VIDEO_EXTENSIONS
from ..io.video import probe_video
from ..utils import atomic_directory, atomic_write_text

#: a job's states; the last four are final
QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued",
    "running",
    "done",
    "failed",
    "cancelled",
    "interrupted",
)
FINAL = (DONE, FAILED, CANCELLED, INTERRUPTED)
#: names of adapters (their training folders) and uploads
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass
class Job:
    """One training or generation: the command it runs and what it writes (`outputs`: name -> path)."""

    id: str
    kind: str
    title: str
    command: list[str]
    outputs: dict[str, str] = field(default_factory=dict)
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    message: str = ""
    total_steps: int | None = None


class Workspace:
    """The app's folder: uploads, adapters, videos and jobs (nothing is served from outside it)."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        for part in ("uploads", "examples", "adapters", "videos", "jobs"):
            (self.root / part).mkdir(parents=True, exist_ok=True)

    def adapters(self) -> dict[str, Path]:
        """Finished adapters by name (the training folder's name)."""
        found = sorted((self.root / "adapters").glob("*/adapter.safetensors"))
        return {path.parent.name: path for path in found}

    def adapter_folder(self, name: str) -> Path:
        """Where a new adapter called `name` trains; InputError for a bad or taken name."""
        if not NAME.fullmatch(name or ""):
            raise InputError(f"adapter name '{name}': use letters, digits, '_', '-' or '.' (at most 64)")
        folder = self.root / "adapters" / name
        if folder.exists():
            raise InputError(f"adapter name '{name}': already used in this workspace; choose another")
        return folder

    def save_videos(self, files: list[Path], caption: str) -> Path:
        """Copy uploaded reference videos into `uploads/<id>/`, each captioned by `caption` (`name.txt`), after
        checking that each decodes; InputError naming the file otherwise, and nothing is kept."""
        if not files:
            raise InputError("no reference videos: upload one or more clips, or pick the bundled example")
        if not caption.strip():
            raise InputError("caption: describe the clips with the token, e.g. 'a dog doing sks'")
        for path in files:
            path = Path(path)
            if path.suffix.lower() not in VIDEO_EXTENSIONS:
                raise InputError(f"{path.name}: not a video ({', '.join(VIDEO_EXTENSIONS)})")
            frames, height, width = probe_video(path)
            if frames < 2:
                raise InputError(f"{path.name}: has {frames} frame(s); a motion needs at least 2")
            if min(height, width) < MIN_VIDEO_SIDE:
                raise InputError(f"{path.name}: {width}x{height} pixels; a side of {MIN_VIDEO_SIDE} at least")
        target = self.root / "uploads" / uuid.uuid4().hex[:12]
        with atomic_directory(target) as staging:
            for index, path in enumerate(files):
                name = f"clip{index:02d}{Path(path).suffix.lower()}"
                shutil.copyfile(path, staging / name)
                (staging / name).with_suffix(".txt").write_text(caption.strip() + "\n")
        return target

    def save_subject_images(self, files: list[Path]) -> Path:
        """Copy uploaded subject images and their masks (`NAME_mask.png` beside `NAME.png`, or an alpha channel)
        into `uploads/<id>/`, after checking them as `train` would (`subject_data`); InputError naming the file
        otherwise, and nothing is kept."""
        from ..io.subject_data import find_subject_images, read_subject_image
        from ..io.video import IMAGE_EXTENSIONS

        if not files:
            raise InputError(
                "no subject images: upload images of the subject with their masks, or pick the bundled subject"
            )
        for path in files:
            if Path(path).suffix.lower() not in IMAGE_EXTENSIONS:
                raise InputError(f"{Path(path).name}: not an image ({', '.join(IMAGE_EXTENSIONS)})")
        target = self.root / "uploads" / uuid.uuid4().hex[:12]
        with atomic_directory(target) as staging:
            for path in files:
                shutil.copyfile(path, staging / Path(path).name)
            try:
                for item in find_subject_images(staging):
                    read_subject_image(item, 64, 64)
            except InputError as error:
                raise InputError(str(error).replace(f"{staging}/", "").replace(str(staging), "the upload")) from None
        return target

    def inside(self, path: Path) -> bool:
        return Path(path).resolve().is_relative_to(self.root)


class JobQueue:
    """Runs queued jobs one after another in a worker thread; every state change is written to `job.json`."""

    def __init__(self, workspace: Workspace, start: bool = True):
        self.workspace = workspace
        self.folder = workspace.root / "jobs"
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._process: subprocess.Popen | None = None
        self._running: str | None = None
        for job in self.jobs():
            if job.state == RUNNING:
                self._finish(job, INTERRUPTED, "the app stopped while it ran")
        if start:
            threading.Thread(target=self._work, daemon=True, name="motiontune-jobs").start()

    # --- records -------------------------------------------------------------------------------------
    def _file(self, job_id: str) -> Path:
        return self.folder / job_id / "job.json"

    def _save(self, job: Job) -> None:
        self._file(job.id).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self._file(job.id), json.dumps(asdict(job), indent=2))

    def get(self, job_id: str) -> Job:
        return Job(**json.loads(self._file(job_id).read_text()))

    def jobs(self) -> list[Job]:
        """Every job, oldest first."""
        found = [Job(**json.loads(path.read_text())) for path in self.folder.glob("*/job.json")]
        return sorted(found, key=lambda job: job.created)

    def log(self, job_id: str) -> str:
        path = self.folder / job_id / "log.txt"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- control -------------------------------------------------------------------------------------
    def submit(self, kind: str, title: str, command: list[str], outputs: dict[str, str], total_steps=None) -> Job:
        job = Job(uuid.uuid4().hex[:12], kind, title, [str(part) for part in command], outputs)
        job.total_steps = total_steps
        with self._lock:
            self._save(job)
        self._wake.set()
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job, or stop a running one (its process group is terminated)."""
        with self._lock:
            job = self.get(job_id)
            if job.state == QUEUED:
                self._finish(job, CANCELLED, "cancelled before it started")
            elif job.state == RUNNING and self._running == job_id and self._process is not None:
                job.message = "cancelling"
                self._save(job)
                os.killpg(self._process.pid, signal.SIGTERM)
            return self.get(job_id)

    def progress(self, job: Job) -> tuple[int, list[float]]:
        """Steps done and the loss per step, from the training run's `training_log.jsonl`."""
        log = Path(job.outputs.get("run", "")) / "training_log.jsonl"
        if job.kind != "train" or not log.is_file():
            return 0, []
        losses = []
        for line in log.read_text().splitlines():
            try:
                losses.append(float(json.loads(line)["loss"]))
            except (ValueError, KeyError, TypeError):
                continue
        return len(losses), losses

    def wait(self, job_id: str, timeout: float) -> Job:
        """Block until the job is final or `timeout` seconds pass (for scripts and tests)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.get(job_id)
            if job.state in FINAL:
                return job
            time.sleep(0.2)
        return self.get(job_id)

    # --- worker --------------------------------------------------------------------------------------
    def _finish(self, job: Job, state: str, message: str) -> None:
        job.state, job.message, job.finished = state, message, time.time()
        self._save(job)

    def _next(self) -> Job | None:
        return next((job for job in self.jobs() if job.state == QUEUED), None)

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self.run(job)

    def run(self, job: Job) -> Job:
        """Run one job to its end in this thread."""
        with self._lock:
            job.state, job.started = RUNNING, time.time()
            self._save(job)
            log = (self.folder / job.id / "log.txt").open("w")
            self._process = subprocess.Popen(
                job.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.workspace.root
            )
            self._running = job.id
        code = self._process.wait()
        log.close()
        with self._lock:
            self._running, self._process = None, None
            job = self.get(job.id)
            if job.message == "cancelling":
                self._finish(job, CANCELLED, "cancelled while running")
            elif code == 0:
                self._finish(job, DONE, "")
            else:
                errors = [line for line in self.log(job.id).splitlines() if "motiontune: error:" in line]
                reason = errors[-1].split("motiontune: error:", 1)[1].strip() if errors else f"exit code {code}"
                self._finish(job, FAILED, reason)
        return self.get(job.id)


def motiontune_command(*arguments: object) -> list[str]:
    """The `motiontune` command line run by this Python (the app's own install)."""
    return [sys.executable, "-m", "motiontune.app.cli", *[str(argument) for argument in arguments]]
