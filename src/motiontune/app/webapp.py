"""`motiontune app`: teach, steer and compare motions in a browser (Gradio).

Three tabs over one workspace (`jobs.Workspace`):
* **Teach**: upload reference clips (checked as the CLI checks them) or pick the bundled ShapeWorld example, choose
  the method; steps, learning rate and batch size show the model's recommendation for it; the training runs as a
  background job with live progress, a loss plot and a cancel button; the adapter lands in `adapters/NAME/`.
* **Generate**: a prompt, any adapters of the workspace together (composition), boxes and a camera speed, seed and
  steps; shows the video and its contact sheet.
* **Compare**: the same prompt and seed without adapters, with each adapter alone and with all of them, side by
  side, scored by `motiontune evaluate` (CLIP and DINO scores with `--clip` / `--dino` folders).

Jobs run one at a time, as `motiontune` processes, and are kept on disk: a page reload or an app restart finds the
workspace as it was. The app listens on 127.0.0.1 unless told otherwise, and serves only files of its workspace.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..control import parse_box_option
from ..errors import MotiontuneError
from ..lab.shapeworld import NOVEL_MOTIONS
from ..methods import METHODS
from ..settings import ModelDefaults, generation_settings
from .jobs import DONE, FINAL, QUEUED, RUNNING, Job, JobQueue, Workspace, motiontune_command

#: the methods the Teach tab offers (the internal pre-training is not one)
TEACH_METHODS = tuple(name for name, cls in METHODS.items() if not getattr(cls, "internal", False))
VIDEO_TYPES = [".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif"]
#: where a compare lays out its videos
COMPARE_SLOTS = 4
#: the box canvas's width in pixels
CANVAS_WIDTH = 256
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".bmp"]
#: the bundled subject (MotionBooth): `bench motionbooth`'s blue star, its token and class word
SUBJECT_EXAMPLE, SUBJECT_TOKEN, SUBJECT_CLASS = "subject-star", "sks", "star"


def method_defaults(model: Path, method: str) -> dict[str, object]:
    """Steps, learning rate and batch size `method` trains with on `model` when the user gives none."""
    from ..methods import method_class
    from .api import training_settings_for

    settings, _ = training_settings_for(method_class(method), model, {}, {}, {}, check_options=False)
    return {key: settings[key].value for key in ("steps", "learning_rate", "batch_size") if key in settings}


def bundled_example(workspace: Workspace, model: Path, motion: str) -> Path:
    """The bundled ShapeWorld reference clips of `motion` at the model's native clip (written once)."""
    from ..lab.tasks import write_task
    from .bench_common import model_clip

    folder = workspace.root / "examples" / motion
    if not (folder / "reference").is_dir():
        frames, size, _ = model_clip(model)
        write_task(folder, frames, size, motion, 0)
    return folder / "reference"


def bundled_subject(workspace: Workspace, model: Path) -> tuple[Path, Path]:
    """The bundled ShapeWorld subject (`bench motionbooth`'s blue star: stills with exact masks) and its video
    preservation clips at the model's native clip (written once)."""
    from ..lab.shapeworld import write_dataset, write_subject_images
    from .bench_common import model_clip
    from .bench_motionbooth import regularization_clips, subject_images

    folder = workspace.root / "examples" / SUBJECT_EXAMPLE
    if not (folder / "regularization").is_dir():
        frames, size, _ = model_clip(model)
        write_subject_images(folder / "subject", subject_images(), size)
        write_dataset(folder / "regularization", regularization_clips(), frames, size)
    return folder / "subject", folder / "regularization"


def _paths(files) -> list[Path]:
    """Uploaded files as paths (Gradio gives paths or objects with a `.name` path)."""
    return [Path(f) if isinstance(f, str | os.PathLike) else Path(f.name) for f in files or []]


def _number(value, field: str = "value") -> float | None:
    """A number field's text; empty means the model's default; anything else not a number is a MotiontuneError."""
    if value is None or not str(value).strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise MotiontuneError(f"{field}: expected a number, got '{value}'") from None


class MotiontuneApp:
    """What the page's events do, apart from Gradio (so they are testable on their own)."""

    def __init__(self, model: Path, workspace: Workspace, queue: JobQueue, clip: Path | None, dino: Path | None):
        self.model, self.workspace, self.queue, self.clip, self.dino = model, workspace, queue, clip, dino
        defaults = ModelDefaults.read(model)
        self.native = defaults.native
        self.sampling_steps = generation_settings(defaults, {})["steps"].value

    # --- teach ---------------------------------------------------------------------------------------
    def teach(
        self,
        files,
        example,
        method,
        name,
        caption,
        token,
        steps,
        learning_rate,
        batch_size,
        subject_files=None,
        class_word: str = "",
    ) -> Job:
        """Queue a training: uploaded clips (captioned) or the bundled example of `example`; for a subject method
        (MotionBooth), uploaded subject images with masks and a class word (the clips, if any, are its video
        preservation data) or the bundled subject. The name is checked first (free in the workspace and among
        queued trainings) and the numbers next, so a refusal keeps no upload."""
        from ..methods import method_class

        run = self.workspace.adapter_folder(name or "")
        pending = [j for j in self.queue.jobs() if j.kind == "train" and j.state in (QUEUED, RUNNING)]
        if any(Path(j.outputs["run"]) == run for j in pending):
            raise MotiontuneError(f"adapter name '{name}': a queued training already uses it; choose another")
        numbers = []
        for option, value in (("--steps", steps), ("--lr", learning_rate), ("--batch-size", batch_size)):
            number = _number(value, option.removeprefix("--"))
            if number is not None:
                numbers += [option, number if option == "--lr" else int(number)]
        token = (token or "").strip() or "sks"
        learns_subject = method_class(method).training_data == "subject images"
        extra: list = []
        if learns_subject:
            data, extra = self._subject_data(files, example, caption, subject_files, class_word)
            if example == SUBJECT_EXAMPLE:
                token = SUBJECT_TOKEN
        elif example == SUBJECT_EXAMPLE:
            raise MotiontuneError(f"the bundled subject is for motionbooth; {method} learns a motion from clips")
        elif subject_files:
            raise MotiontuneError(f"subject images are for motionbooth; {method} learns a motion from clips")
        elif example:
            data = bundled_example(self.workspace, self.model, example)
        else:
            data = self.workspace.save_videos(_paths(files), caption or "")
        arguments = ["train", "--method", method, "--model", self.model, "--data", data, "--output", run]
        arguments += ["--token", token, "--checkpoint-every", "0", "--quiet", *numbers, *extra]
        total = int(_number(steps) or 0) or method_defaults(self.model, method).get("steps")
        outputs = {"run": str(run), "adapter": str(run / "adapter.safetensors")}
        return self.queue.submit("train", f"{method}: {run.name}", motiontune_command(*arguments), outputs, total)

    def _subject_data(self, files, example, caption, subject_files, class_word) -> tuple[Path, list]:
        """A subject training's images and its options: the class word and the video preservation clips (if any)."""
        if example == SUBJECT_EXAMPLE:
            images, regularization = bundled_subject(self.workspace, self.model)
            return images, ["--class-word", SUBJECT_CLASS, "--reg-data", regularization]
        if example:
            raise MotiontuneError(
                "motionbooth learns a subject: upload its images with masks or pick the bundled subject"
            )
        if not (class_word or "").strip():
            raise MotiontuneError("class word: name what the subject is, e.g. dog (captions read 'a sks dog')")
        images = self.workspace.save_subject_images(_paths(subject_files))
        options = ["--class-word", class_word.strip()]
        if files:
            options += ["--reg-data", self.workspace.save_videos(_paths(files), caption or "")]
        return images, options

    # --- generate ------------------------------------------------------------------------------------
    def generate(
        self, prompt, adapters, boxes, camera, seed, steps, group: str = "", label: str = "", attention: str = ""
    ) -> Job:
        """Queue one generation with `adapters` (names in the workspace) composed; a compare's videos are named by
        their variant under `videos/<group>/`. `attention`: comma-separated prompt words whose attention maps are
        drawn over the frames (`generate --attention-maps`)."""
        if not (prompt or "").strip():
            raise MotiontuneError("prompt: write what to generate")
        known = self.workspace.adapters()
        video = self.workspace.root / "videos" / f"{int(time.time() * 1000)}-{os.getpid()}.mp4"
        if group:
            video = self.workspace.root / "videos" / group / f"{re.sub(r'[^A-Za-z0-9_.+-]+', '_', label)}.mp4"
        arguments = ["generate", "--model", self.model, "--prompt", prompt, "--output", video, "--quiet"]
        for name in adapters or []:
            if name not in known:
                raise MotiontuneError(f"adapter '{name}': not in this workspace (finished trainings only)")
            arguments += ["--adapter", known[name]]
        if (boxes or "").strip():
            arguments += ["--box", boxes.strip()]
        if (camera or "").strip():
            arguments += ["--camera-speed", camera.strip()]
        arguments += ["--seed", int(_number(seed, "seed") or 0)]
        if _number(steps, "steps") is not None:
            arguments += ["--steps", int(_number(steps, "steps"))]
        words = [word.strip() for word in (attention or "").split(",") if word.strip()]
        for word in words:
            arguments += ["--attention-maps", word]
        outputs = {"video": str(video), "sheet": str(video.with_suffix(".png")), "group": group, "label": label}
        outputs["attention"] = str(video.with_suffix(".attention.png")) if words else ""
        title = f"generate: {prompt}" + (f" ({label})" if label else "")
        return self.queue.submit("generate", title, motiontune_command(*arguments), outputs)

    # --- boxes drawn on a canvas ---------------------------------------------------------------------
    def canvas_size(self) -> tuple[int, int]:
        """(width, height) of the box canvas: the model's native frame shape, CANVAS_WIDTH pixels wide."""
        height, width = self.native.get("height", 256), self.native.get("width", 256)
        return CANVAS_WIDTH, max(32, round(CANVAS_WIDTH * height / width))

    def box_canvas(self, boxes: str, pending: str = "") -> np.ndarray:
        """The canvas `(H, W, 3)` uint8: a grid, each keyframe box of `boxes` (`WORDS:x1,y1,x2,y2;...`) numbered
        in order, blue to red, and the first corner of a box being drawn."""
        width, height = self.canvas_size()
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        for k in range(1, 8):
            draw.line([(width * k / 8, 0), (width * k / 8, height)], fill=(225, 225, 225))
            draw.line([(0, height * k / 8), (width, height * k / 8)], fill=(225, 225, 225))
        keyframes = parse_box_option(boxes).keyframes if (boxes or "").strip() else ()
        for index, (x1, y1, x2, y2) in enumerate(keyframes):
            share = index / max(1, len(keyframes) - 1)
            colour = (round(255 * share), 60, round(255 * (1 - share)))
            draw.rectangle([x1 * width, y1 * height, x2 * width, y2 * height], outline=colour, width=2)
            draw.text((x1 * width + 4, y1 * height + 2), str(index + 1), fill=colour)
        if (pending or "").strip():
            x, y = (float(v) for v in pending.split(","))
            draw.ellipse([x * width - 4, y * height - 4, x * width + 4, y * height + 4], fill=(0, 160, 0))
        return np.asarray(image)

    def canvas_click(self, boxes: str, words: str, pending: str, x: float, y: float) -> tuple[str, str]:
        """A click at canvas pixel (x, y): the first corner of a box (kept in `pending`), or its opposite corner,
        which adds the box as the next keyframe of `words`' path. Returns the new boxes text and pending corner."""
        words = (words or "").strip()
        if not words:
            raise MotiontuneError("box words: name the subject in the prompt first (e.g. 'red circle')")
        width, height = self.canvas_size()
        point = (min(max(x / width, 0.0), 1.0), min(max(y / height, 0.0), 1.0))
        if not (pending or "").strip():
            return boxes or "", f"{point[0]:.3f},{point[1]:.3f}"
        first = tuple(float(v) for v in pending.split(","))
        box = (min(first[0], point[0]), min(first[1], point[1]), max(first[0], point[0]), max(first[1], point[1]))
        if box[2] - box[0] < 0.02 or box[3] - box[1] < 0.02:
            raise MotiontuneError("box: drag out a larger box (click two opposite corners)")
        keyframes = list(parse_box_option(boxes).keyframes) if (boxes or "").strip() else []
        if (boxes or "").strip() and parse_box_option(boxes).words != words:
            keyframes = []  # a path for other words starts afresh
        keyframes.append(box)
        text = ";".join(",".join(f"{value:.3f}" for value in keyframe) for keyframe in keyframes)
        return f"{words}:{text}", ""

    # --- compare -------------------------------------------------------------------------------------
    def compare(self, prompt, adapters, seed, steps) -> list[Job]:
        """Queue the same prompt and seed without adapters, with each alone and (for two or more) all together,
        then `motiontune evaluate` over the videos."""
        adapters = list(adapters or [])
        variants = [("no adapter", [])] + [(name, [name]) for name in adapters]
        if len(adapters) > 1:
            variants.append(("all: " + " + ".join(adapters), adapters))
        if len(variants) > COMPARE_SLOTS:
            raise MotiontuneError(f"Compare shows {COMPARE_SLOTS} videos: tick one or two adapters")
        group = f"compare-{int(time.time() * 1000)}"
        jobs = [self.generate(prompt, chosen, "", "", seed, steps, group, label) for label, chosen in variants]
        report = self.workspace.root / "videos" / group / "evaluation"
        arguments = ["evaluate", *[job.outputs["video"] for job in jobs], "--prompt", prompt, "--output", report]
        arguments += ["--quiet", *(["--shapeworld"] if (self.model / "recipe.json").is_file() else [])]
        for option, folder in (("--clip", self.clip), ("--dino", self.dino)):
            if folder is not None:
                arguments += [option, folder]
        outputs = {"report": str(report / "report.md"), "group": group}
        jobs.append(self.queue.submit("evaluate", f"evaluate: {prompt}", motiontune_command(*arguments), outputs))
        return jobs

    # --- reading the workspace -------------------------------------------------------------------------
    def job_rows(self) -> list[list[str]]:
        rows = []
        for job in reversed(self.queue.jobs()):
            done, _ = self.queue.progress(job)
            progress = f"{done}/{job.total_steps}" if job.kind == "train" and job.total_steps else ""
            rows.append([job.id, job.kind, job.title, job.state, progress, job.message])
        return rows

    def status(self, job_id: str | None) -> tuple[str, list[tuple[int, float]]]:
        """A line on the job and its loss curve `(step, loss)`."""
        jobs = self.queue.jobs()
        job = next((j for j in jobs if j.id == job_id), None) or next(
            (j for j in reversed(jobs) if j.kind == "train"), None
        )
        if job is None:
            return "No training yet.", []
        done, losses = self.queue.progress(job)
        total = job.total_steps or "?"
        line = f"**{job.title}**: {job.state}, step {done} / {total}"
        if losses:
            line += f", loss {losses[-1]:.4f}"
        if job.message and job.state != RUNNING:
            line += f" ({job.message})"
        return line, list(enumerate(losses, start=1))

    def current_training(self, job_id: str | None) -> Job | None:
        """The training `job_id`, else the newest training that is queued or running."""
        jobs = self.queue.jobs()
        chosen = next((j for j in jobs if j.id == job_id and j.kind == "train"), None)
        return chosen or next((j for j in reversed(jobs) if j.kind == "train" and j.state in (QUEUED, RUNNING)), None)

    def latest(self, kind: str, group: str | None = None) -> Job | None:
        for job in reversed(self.queue.jobs()):
            if job.kind == kind and (group is None or job.outputs.get("group") == group):
                return job
        return None


def build_app(app: MotiontuneApp):
    """The Gradio page over `app`."""
    import gradio as gr
    import pandas as pd

    def refresh_adapters():
        names = list(app.workspace.adapters())
        return gr.update(choices=names), gr.update(choices=names)

    def loss_frame(points):
        return pd.DataFrame(points or [(0, float("nan"))], columns=["step", "loss"])

    def checked(function):
        def wrapped(*arguments):
            try:
                return function(*arguments)
            except MotiontuneError as error:
                raise gr.Error(str(error)) from None

        return wrapped

    def on_method(method):
        defaults = method_defaults(app.model, method)
        return (
            gr.update(placeholder=f"model default: {defaults.get('steps')}", value=""),
            gr.update(placeholder=f"model default: {defaults.get('learning_rate')}", value=""),
            gr.update(placeholder=f"model default: {defaults.get('batch_size')}", value=""),
        )

    first = TEACH_METHODS[0]
    defaults = method_defaults(app.model, first)
    native = app.native
    with gr.Blocks(title="motiontune") as page:
        gr.Markdown(
            f"# motiontune\nModel: `{app.model}` (native clip: {native.get('frames', '?')} frames of "
            f"{native.get('height', '?')} x {native.get('width', '?')}). Workspace: `{app.workspace.root}`."
        )
        with gr.Tab("Teach", elem_id="tab-teach"):
            with gr.Row():
                with gr.Column():
                    clips = gr.File(
                        label="Reference clips", file_count="multiple", file_types=VIDEO_TYPES, elem_id="teach-clips"
                    )
                    subject_files = gr.File(
                        label="Subject images with masks (motionbooth): NAME.png + NAME_mask.png, or images with "
                        "an alpha channel; the clips above, if any, are its video preservation data",
                        file_count="multiple",
                        file_types=IMAGE_TYPES,
                        elem_id="teach-subject",
                    )
                    example = gr.Dropdown(
                        [
                            ("(my uploads)", ""),
                            *[(f"bundled ShapeWorld example: {m}", m) for m in NOVEL_MOTIONS],
                            ("bundled ShapeWorld subject: a blue star (motionbooth)", SUBJECT_EXAMPLE),
                        ],
                        value="",
                        label="Or the bundled example",
                        elem_id="teach-example",
                    )
                    caption = gr.Textbox(label="Caption of the clips (with the token)", elem_id="teach-caption")
                    token = gr.Textbox(value="sks", label="Token", elem_id="teach-token")
                    class_word = gr.Textbox(
                        label="Class word of the subject (motionbooth), e.g. dog", elem_id="teach-class"
                    )
                with gr.Column():
                    method = gr.Dropdown(list(TEACH_METHODS), value=first, label="Method", elem_id="teach-method")
                    name = gr.Textbox(label="Adapter name", elem_id="teach-name")
                    steps = gr.Textbox(
                        label="Steps", placeholder=f"model default: {defaults.get('steps')}", elem_id="teach-steps"
                    )
                    learning_rate = gr.Textbox(
                        label="Learning rate",
                        placeholder=f"model default: {defaults.get('learning_rate')}",
                        elem_id="teach-lr",
                    )
                    batch_size = gr.Textbox(
                        label="Batch size",
                        placeholder=f"model default: {defaults.get('batch_size')}",
                        elem_id="teach-batch",
                    )
                    train = gr.Button("Train", variant="primary", elem_id="teach-train")
            teach_message = gr.Markdown(elem_id="teach-message")
            with gr.Row():
                job_status = gr.Markdown(elem_id="teach-status")
                cancel = gr.Button("Cancel this training", elem_id="teach-cancel")
            job_choice = gr.Textbox(visible=False)
            loss_plot = gr.LinePlot(loss_frame([]), x="step", y="loss", title="training loss", elem_id="teach-loss")
            jobs_table = gr.Dataframe(
                headers=["job", "kind", "what", "state", "steps", "message"], interactive=False, elem_id="jobs"
            )
        with gr.Tab("Generate", elem_id="tab-generate"), gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", elem_id="generate-prompt")
                adapters = gr.CheckboxGroup(
                    list(app.workspace.adapters()), label="Adapters (composed)", elem_id="generate-adapters"
                )
                box_words = gr.Textbox(label="Box words: the subject as the prompt names it", elem_id="box-words")
                gr.Markdown("Draw the subject's path: click two opposite corners per keyframe box.")
                canvas = gr.Image(app.box_canvas(""), show_label=False, interactive=False, elem_id="box-canvas")
                clear_boxes = gr.Button("Clear boxes", size="sm", elem_id="box-clear")
                pending_corner = gr.Textbox(visible=False)
                boxes = gr.Textbox(label="Boxes: WORDS:x1,y1,x2,y2;x1,y1,x2,y2 (keyframes)", elem_id="boxes")
                camera = gr.Textbox(label="Camera speed DX,DY (fraction of the frame)", elem_id="camera")
                with gr.Row():
                    seed = gr.Textbox("0", label="Seed", elem_id="generate-seed")
                    sampling_steps = gr.Textbox(
                        label="Steps", placeholder=f"model default: {app.sampling_steps}", elem_id="generate-steps"
                    )
                attention_words = gr.Textbox(
                    label="Show where these prompt words look (comma-separated; attention maps)",
                    elem_id="attention-words",
                )
                generate = gr.Button("Generate", variant="primary", elem_id="generate-run")
                generate_message = gr.Markdown(elem_id="generate-message")
                generate_status = gr.Markdown(elem_id="generate-status")
            with gr.Column():
                video = gr.Video(label="Video", elem_id="generate-video", autoplay=True)
                sheet = gr.Image(label="Contact sheet", elem_id="generate-sheet")
                attention_sheet = gr.Image(label="Attention maps over the frames", elem_id="generate-attention")
        with gr.Tab("Compare", elem_id="tab-compare"):
            compare_prompt = gr.Textbox(label="Prompt", elem_id="compare-prompt")
            compare_adapters = gr.CheckboxGroup(
                list(app.workspace.adapters()), label="Adapters", elem_id="compare-adapters"
            )
            compare_seed = gr.Textbox("0", label="Seed", elem_id="compare-seed")
            compare_run = gr.Button("Compare", variant="primary", elem_id="compare-run")
            compare_group = gr.Textbox(visible=False)
            with gr.Row():
                compare_videos = [gr.Video(label="", elem_id=f"compare-video-{i}") for i in range(COMPARE_SLOTS)]
            compare_report = gr.Markdown(elem_id="compare-report")

        def start_training(*values):
            job = app.teach(*values)
            return f"Queued **{job.title}**.", job.id

        train.click(
            checked(start_training),
            [clips, example, method, name, caption, token, steps, learning_rate, batch_size, subject_files, class_word],
            [teach_message, job_choice],
        )
        method.change(on_method, method, [steps, learning_rate, batch_size])

        def cancel_training(job_id):
            job = app.current_training(job_id or None)
            if job is None:
                return "No training to cancel."
            return f"**{job.title}**: {app.queue.cancel(job.id).state}."

        cancel.click(checked(cancel_training), job_choice, teach_message)

        def start_generation(text, chosen, box_text, camera_text, seed_value, steps_value, words):
            job = app.generate(text, chosen, box_text, camera_text, seed_value, steps_value, attention=words)
            return f"Queued **{job.title}**."

        generate.click(
            checked(start_generation),
            [prompt, adapters, boxes, camera, seed, sampling_steps, attention_words],
            generate_message,
        )

        def click_canvas(box_text, words, pending, event):
            try:
                box_text, pending = app.canvas_click(box_text, words, pending, *event.index)
            except MotiontuneError as error:
                raise gr.Error(str(error)) from None
            return box_text, pending, app.box_canvas(box_text, pending)

        # Gradio passes the click (x, y) to a parameter annotated with the class itself (not its name as a string)
        click_canvas.__annotations__ = {"event": gr.SelectData}

        def redraw_canvas(box_text, pending):
            try:
                return app.box_canvas(box_text, pending)
            except MotiontuneError:
                return gr.update()  # half-typed boxes: keep the last drawing

        canvas.select(click_canvas, [boxes, box_words, pending_corner], [boxes, pending_corner, canvas])
        boxes.input(redraw_canvas, [boxes, pending_corner], canvas)
        clear_boxes.click(lambda: ("", "", app.box_canvas("")), None, [boxes, pending_corner, canvas])

        def start_compare(text, chosen, seed_value):
            jobs = app.compare(text, chosen, seed_value, None)
            return jobs[0].outputs["group"]

        compare_run.click(checked(start_compare), [compare_prompt, compare_adapters, compare_seed], compare_group)

        def tick(job_id, group, shown):
            """Every second: the training's status and loss, the jobs, and results that are new since the last
            tick (a video already on the page is left playing)."""
            line, points = app.status(job_id or None)
            shown = json.loads(shown or "{}")
            updates = {}
            finished = next(
                (j for j in reversed(app.queue.jobs()) if j.kind == "generate" and not j.outputs["group"]), None
            )
            generation = ""
            if finished is not None:
                generation = f"**{finished.title}**: {finished.state}" + (
                    f" ({finished.message})" if finished.message else ""
                )
                if finished.state == DONE:
                    outputs = finished.outputs
                    updates["video"] = (outputs["video"], outputs["sheet"], outputs.get("attention") or None)
            compared = [
                j for j in app.queue.jobs() if j.kind == "generate" and group and j.outputs.get("group") == group
            ]
            for slot, job in enumerate(compared[:COMPARE_SLOTS]):
                if job.state == DONE:
                    updates[f"compare-{slot}"] = (job.outputs["video"], job.outputs["label"])
            report = ""
            evaluation = app.latest("evaluate", group) if group else None
            if evaluation is not None:
                report = (
                    Path(evaluation.outputs["report"]).read_text()
                    if evaluation.state == DONE
                    else (f"evaluation: {evaluation.state} {evaluation.message}")
                )

            def changed(key, make):
                return make(*updates[key]) if key in updates and shown.get(key) != list(updates[key]) else gr.update()

            names = list(app.workspace.adapters())
            outputs = (
                line,
                loss_frame(points),
                app.job_rows(),
                changed("video", lambda path, *_: path),
                changed("video", lambda _, image, __: image),
                changed("video", lambda *paths: paths[2]),
                generation,
                gr.update(choices=names),
                gr.update(choices=names),
                *[
                    changed(f"compare-{slot}", lambda path, label: gr.update(value=path, label=label))
                    for slot in range(COMPARE_SLOTS)
                ],
                report,
                json.dumps({key: list(value) for key, value in updates.items()}),
            )
            return outputs

        shown_state = gr.Textbox(visible=False)
        timer = gr.Timer(1.0)
        timer.tick(
            tick,
            [job_choice, compare_group, shown_state],
            [
                job_status,
                loss_plot,
                jobs_table,
                video,
                sheet,
                attention_sheet,
                generate_status,
                adapters,
                compare_adapters,
                *compare_videos,
                compare_report,
                shown_state,
            ],
        )
        page.load(refresh_adapters, None, [adapters, compare_adapters])
    return page


def serve(
    model: Path,
    workspace: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    clip: Path | None = None,
    dino: Path | None = None,
) -> None:
    """Start the app (blocks until interrupted). The process works inside the workspace, which is the only folder
    it serves files from (besides Gradio's own upload cache)."""
    room = Workspace(workspace)
    queue = JobQueue(room)
    app = MotiontuneApp(Path(model).resolve(), room, queue, clip, dino)
    os.chdir(room.root)
    page = build_app(app)
    print(json.dumps({"url": f"http://{host}:{port or 7860}", "workspace": str(room.root)}), flush=True)
    page.launch(server_name=host, server_port=port, allowed_paths=[str(room.root)], show_error=True, quiet=True)


__all__ = ["FINAL", "QUEUED", "MotiontuneApp", "build_app", "serve"]
