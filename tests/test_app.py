"""`motiontune app`: the workspace and job queue on their own, and the whole app driven in a real Chromium (Debian's
`chromium` + `chromedriver`, which `.ci/run` installs; never a downloaded browser)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from motiontune.app.jobs import CANCELLED, DONE, FAILED, INTERRUPTED, RUNNING, JobQueue, Workspace
from motiontune.errors import InputError
from motiontune.io.video import write_video
from motiontune.lab.shapeworld import Clip, render

SCREENSHOTS = os.environ.get("MOTIONTUNE_APP_SCREENSHOTS")


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_uploads_are_checked_and_copied_with_their_caption(tmp_path):
    workspace = Workspace(tmp_path / "ws")
    clip = write_video(render(Clip("circle", "red", "white", "zigzag"), 4, 32).frames, tmp_path / "z.mp4")
    folder = workspace.save_videos([clip], "a red circle doing sks")
    assert (folder / "clip00.mp4").read_bytes() == clip.read_bytes()
    assert (folder / "clip00.txt").read_text() == "a red circle doing sks\n"
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(InputError, match=r"bad\.mp4"):
        workspace.save_videos([clip, bad], "a caption")
    with pytest.raises(InputError, match="caption: describe the clips"):
        workspace.save_videos([clip], " ")
    with pytest.raises(InputError, match="no reference videos"):
        workspace.save_videos([], "a caption")
    assert len(list((workspace.root / "uploads").iterdir())) == 1, "a refused upload leaves nothing behind"
    with pytest.raises(InputError, match=r"adapter name '\.\./x'"):
        workspace.adapter_folder("../x")
    (workspace.root / "adapters" / "taken").mkdir()
    with pytest.raises(InputError, match="already used"):
        workspace.adapter_folder("taken")


def test_jobs_run_one_at_a_time_report_errors_cancel_and_survive_a_restart(tmp_path):
    workspace = Workspace(tmp_path / "ws")
    queue = JobQueue(workspace, start=False)
    ok = queue.submit("generate", "ok", _python("print('fine')"), {})
    failing = queue.submit(
        "train", "bad", _python("import sys; print('motiontune: error: x.mp4: broken'); sys.exit(2)"), {}
    )
    assert queue.run(ok).state == DONE and "fine" in queue.log(ok.id)
    failed = queue.run(failing)
    assert (failed.state, failed.message) == (FAILED, "x.mp4: broken")

    slow = queue.submit("train", "slow", _python("import time; time.sleep(60)"), {})
    queued = queue.submit("train", "never", _python("print(1)"), {})
    assert queue.cancel(queued.id).state == CANCELLED
    runner = JobQueue(workspace)  # a worker thread: the slow job starts
    deadline = time.time() + 30
    while runner.get(slow.id).state != RUNNING and time.time() < deadline:
        time.sleep(0.1)
    assert runner.cancel(slow.id).message == "cancelling"
    assert runner.wait(slow.id, 30).state == CANCELLED

    record = workspace.root / "jobs" / slow.id / "job.json"
    stale = {**json.loads(record.read_text()), "state": RUNNING, "message": ""}
    record.write_text(json.dumps(stale))
    restarted = JobQueue(workspace, start=False)
    assert restarted.get(slow.id).state == INTERRUPTED
    assert [job.title for job in restarted.jobs()] == ["ok", "bad", "slow", "never"]


def test_app_events_refuse_a_taken_name_before_keeping_an_upload_and_too_many_comparisons(tiny_model_dir, tmp_path):
    from motiontune.app.webapp import MotiontuneApp
    from motiontune.errors import MotiontuneError

    workspace = Workspace(tmp_path / "ws")
    app = MotiontuneApp(Path(tiny_model_dir), workspace, JobQueue(workspace, start=False), None, None)
    clip = write_video(render(Clip("circle", "red", "white", "zigzag"), 4, 32).frames, tmp_path / "z.mp4")
    job = app.teach([clip], "", "newmove", "mine", "a red circle doing sks", "sks", "2", "", "")
    assert job.total_steps == 2 and "--steps" in job.command and "--lr" not in job.command
    with pytest.raises(MotiontuneError, match="a queued training already uses it"):
        app.teach([clip], "", "newmove", "mine", "a red circle doing sks", "sks", "", "", "")
    with pytest.raises(MotiontuneError, match="steps: expected a number, got 'many'"):
        app.teach([clip], "", "newmove", "other", "a red circle doing sks", "sks", "many", "", "")
    assert len(list((workspace.root / "uploads").iterdir())) == 1
    for name in ("a", "b", "c"):
        (workspace.root / "adapters" / name).mkdir()
        (workspace.root / "adapters" / name / "adapter.safetensors").write_bytes(b"")
    with pytest.raises(MotiontuneError, match="tick one or two adapters"):
        app.compare("a prompt", ["a", "b", "c"], "0", None)
    assert len(app.compare("a prompt", ["a", "b"], "0", None)) == 5  # none, a, b, a + b, and the evaluation


def _app(model: Path, tmp_path: Path):
    from motiontune.app.webapp import MotiontuneApp

    workspace = Workspace(tmp_path / "ws")
    return MotiontuneApp(Path(model), workspace, JobQueue(workspace, start=False), None, None)


def _subject_files(folder: Path) -> list[Path]:
    """A blue star `star.png` with its mask `star_mask.png` beside it."""
    from PIL import Image

    star = render(Clip("star", "blue", "gray", "static", "large"), 1, 32)
    Image.fromarray(star.frames[0]).save(folder / "star.png")
    Image.fromarray(star.masks[0].astype("uint8") * 255).save(folder / "star_mask.png")
    return [folder / "star.png", folder / "star_mask.png"]


def test_subject_uploads_are_checked_as_train_checks_them_and_a_refusal_keeps_nothing(tmp_path):
    from PIL import Image

    workspace = Workspace(tmp_path / "ws")
    star = render(Clip("star", "blue", "gray", "static", "large"), 1, 32)
    _subject_files(tmp_path)
    Image.fromarray(star.frames[0]).save(tmp_path / "lonely.png")
    folder = workspace.save_subject_images([tmp_path / "star.png", tmp_path / "star_mask.png"])
    assert sorted(p.name for p in folder.iterdir()) == ["star.png", "star_mask.png"]
    with pytest.raises(InputError, match=r"^lonely\.png: no mask \(expected masks/lonely\.png"):
        workspace.save_subject_images([tmp_path / "star.png", tmp_path / "star_mask.png", tmp_path / "lonely.png"])
    with pytest.raises(InputError, match=r"notes\.txt: not an image"):
        workspace.save_subject_images([tmp_path / "star.png", tmp_path / "notes.txt"])
    with pytest.raises(InputError, match="no subject images"):
        workspace.save_subject_images([])
    assert [p.name for p in (workspace.root / "uploads").iterdir()] == [folder.name]


def test_teach_trains_motionbooth_on_the_bundled_subject_or_uploads_and_refuses_mixups(tiny_model_dir, tmp_path):
    from motiontune.app.webapp import method_defaults
    from motiontune.errors import MotiontuneError
    from motiontune.io.subject_data import find_subject_images

    app = _app(tiny_model_dir, tmp_path)
    assert method_defaults(app.model, "motionbooth")["steps"] > 0  # no class word needed to read the defaults
    job = app.teach(None, "subject-star", "motionbooth", "star", "", "", "2", "", "")
    command = [str(part) for part in job.command]
    assert command[command.index("--class-word") + 1] == "star" and command[command.index("--token") + 1] == "sks"
    images = Path(command[command.index("--data") + 1])
    assert len(find_subject_images(images)) == 5
    assert list(Path(command[command.index("--reg-data") + 1]).glob("*.mp4"))
    with pytest.raises(MotiontuneError, match="class word: name what the subject is"):
        app.teach(None, "", "motionbooth", "mine", "", "sks", "", "", "", [images / "x.png"], " ")
    with pytest.raises(MotiontuneError, match="motionbooth learns a subject"):
        app.teach(None, "zigzag", "motionbooth", "mine", "", "sks", "", "", "")
    with pytest.raises(MotiontuneError, match="the bundled subject is for motionbooth"):
        app.teach(None, "subject-star", "newmove", "mine", "", "sks", "", "", "")
    uploaded = sorted(images.glob("*.png"))[:1] + sorted((images / "masks").glob("*.png"))[:1]
    with pytest.raises(MotiontuneError, match="no mask"):  # the mask sits in masks/ upstream, not beside it
        app.teach(None, "", "motionbooth", "mine", "", "sks", "", "", "", uploaded[:1], "star")
    assert not list((app.workspace.root / "uploads").iterdir())


def test_boxes_drawn_on_the_canvas_become_keyframes_of_the_named_subject(tiny_model_dir, tmp_path):
    from motiontune.app.webapp import CANVAS_WIDTH
    from motiontune.control import parse_box_option
    from motiontune.errors import MotiontuneError

    app = _app(tiny_model_dir, tmp_path)
    width, height = app.canvas_size()
    assert width == CANVAS_WIDTH
    boxes, pending = app.canvas_click("", "red circle", "", 0.1 * width, 0.2 * height)
    assert (boxes, pending) == ("", "0.100,0.200")
    boxes, pending = app.canvas_click(boxes, "red circle", pending, 0.4 * width, 0.05 * height)
    assert (boxes, pending) == ("red circle:0.100,0.050,0.400,0.200", "")
    for x, y in ((0.9 * width, 0.9 * height), (0.6 * width, 0.5 * height)):
        boxes, pending = app.canvas_click(boxes, "red circle", pending, x, y)
    assert parse_box_option(boxes).keyframes == ((0.1, 0.05, 0.4, 0.2), (0.6, 0.5, 0.9, 0.9))
    assert app.canvas_click(boxes, "blue square", "0.1,0.1", 0.5 * width, 0.5 * height)[0].startswith("blue square:0.1")
    with pytest.raises(MotiontuneError, match="drag out a larger box"):
        app.canvas_click(boxes, "red circle", "0.5,0.5", 0.5 * width + 1, 0.5 * height + 1)
    with pytest.raises(MotiontuneError, match="box words: name the subject"):
        app.canvas_click(boxes, " ", "", 1, 1)
    canvas = app.box_canvas(boxes, "0.5,0.5")
    assert canvas.shape == (height, width, 3)
    first_left, second_left = round(0.1 * width), round(0.6 * width)
    rows = slice(round(0.1 * height), round(0.15 * height))
    assert (canvas[rows, first_left, 2] > 200).all() and (canvas[rows, first_left, 0] < 60).all()  # blue: first
    rows = slice(round(0.6 * height), round(0.8 * height))
    assert (canvas[rows, second_left, 0] > 200).all() and (canvas[rows, second_left, 2] < 60).all()  # red: last


def test_generate_asks_for_attention_maps_and_compare_reads_shapeworld_videos(tiny_model_dir, tmp_path):
    app = _app(tiny_model_dir, tmp_path)
    job = app.generate("a red circle doing sks", [], "", "", "0", "", attention="red circle, sks")
    command = [str(part) for part in job.command]
    assert [command[i + 1] for i, part in enumerate(command) if part == "--attention-maps"] == ["red circle", "sks"]
    assert job.outputs["attention"].endswith(".attention.png")
    assert app.generate("a red circle", [], "", "", "0", "").outputs["attention"] == ""
    assert "--shapeworld" not in app.compare("a red circle", [], "0", None)[-1].command
    shapeworld = tmp_path / "shapeworld"
    shutil.copytree(tiny_model_dir, shapeworld)
    (shapeworld / "recipe.json").write_text("{}")
    assert "--shapeworld" in _app(shapeworld, tmp_path / "2").compare("a red circle", [], "0", None)[-1].command


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Debian's chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1500")
    options.binary_location = chromium
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def _failed(browser) -> bool:
    """A job the page reports as failed stops the test with its message."""
    from selenium.webdriver.common.by import By

    for element in browser.find_elements(By.CSS_SELECTOR, "#teach-status, #generate-status"):
        if ": failed" in element.text:
            raise AssertionError(element.text)
    return False


def _wait(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_teach_generate_and_compare_in_chromium(browser, tiny_model_dir, tmp_path):
    """Upload a clip, train two adapters a few steps, generate with both composed (the video plays: duration > 0;
    the server serves it, and nothing outside the workspace), compare with and without one; then a page reload and
    an app restart find the workspace as it was."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from motiontune.control import parse_box_option

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "motiontune.json").write_text(json.dumps({"native": {"frames": 4, "height": 32, "width": 32}}))
    clip = write_video(render(Clip("circle", "red", "white", "zigzag"), 4, 32).frames, tmp_path / "zigzag.mp4")
    port, workspace = _free_port(), tmp_path / "workspace"
    command = [sys.executable, "-m", "motiontune.app.cli", "app", "--model", str(model), "--workspace", str(workspace)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([*command, "--port", str(port)], env=environment, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(server.stdout.readline())["workspace"] == str(workspace.resolve())
        url = f"http://127.0.0.1:{port}/"
        _wait(lambda: _listening(port), 60, "the app to listen")
        browser.get(url)
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#teach-clips input[type=file]"), 60, "the page")
        for name in ("first", "second"):
            browser.find_element(By.CSS_SELECTOR, "#teach-clips input[type=file]").send_keys(str(clip))
            for field, text in (("caption", "a red circle doing sks"), ("name", name), ("steps", "2")):
                box = browser.find_element(By.CSS_SELECTOR, f"#teach-{field} textarea, #teach-{field} input")
                box.clear()
                box.send_keys(text)
            time.sleep(1)
            browser.find_element(By.ID, "teach-train").click()
            status = lambda n=name: f"{n}: done" in browser.find_element(By.ID, "teach-status").text  # noqa: E731
            _wait(lambda status=status: status() or _failed(browser), 180, f"training {name}")
        assert "step 2 / 2" in browser.find_element(By.ID, "teach-status").text

        # a subject for MotionBooth: images with their masks
        method = browser.find_element(By.CSS_SELECTOR, "#teach-method input")
        method.click()
        method.send_keys(Keys.CONTROL, "a")
        method.send_keys("motionbooth", Keys.ENTER)
        time.sleep(1)
        assert not browser.find_elements(By.CSS_SELECTOR, ".toast-body.error"), "choosing a method raises nothing"
        subject = "\n".join(str(path) for path in _subject_files(tmp_path))
        browser.find_element(By.CSS_SELECTOR, "#teach-subject input[type=file]").send_keys(subject)
        for field, text in (("class", "star"), ("name", "star"), ("steps", "2")):
            box = browser.find_element(By.CSS_SELECTOR, f"#teach-{field} textarea, #teach-{field} input")
            box.clear()
            box.send_keys(text)
        time.sleep(1)
        browser.find_element(By.ID, "teach-train").click()
        subject_done = lambda: "motionbooth: star: done" in browser.find_element(By.ID, "teach-status").text  # noqa: E731
        _wait(lambda: subject_done() or _failed(browser), 180, "training the subject")
        if SCREENSHOTS:
            browser.save_screenshot(str(Path(SCREENSHOTS) / "app-teach.png"))

        browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Generate')]").click()
        browser.find_element(By.CSS_SELECTOR, "#generate-prompt textarea").send_keys("a red circle doing sks")
        browser.find_element(By.CSS_SELECTOR, "#box-words textarea, #box-words input").send_keys("red circle")
        canvas = browser.find_element(By.CSS_SELECTOR, "#box-canvas img")
        size = canvas.size
        for dx, dy in ((-0.3, -0.3), (0.0, 0.0)):  # from the canvas's centre: corners at 0.2 and 0.5 of the frame
            offset = (round(dx * size["width"]), round(dy * size["height"]))
            ActionChains(browser).move_to_element_with_offset(canvas, *offset).click().perform()
            time.sleep(1.5)
        drawn = browser.find_element(By.CSS_SELECTOR, "#boxes textarea, #boxes input")
        _wait(lambda: drawn.get_attribute("value"), 30, "the box drawn on the canvas")
        (box,) = parse_box_option(drawn.get_attribute("value")).keyframes
        assert box == pytest.approx((0.2, 0.2, 0.5, 0.5), abs=0.02)
        browser.find_element(By.CSS_SELECTOR, "#attention-words textarea, #attention-words input").send_keys("circle")
        for name in ("first", "second"):
            box = f"#generate-adapters input[name='{name}']"
            _wait(lambda box=box: browser.find_elements(By.CSS_SELECTOR, box), 30, f"adapter {name} on the page")
            browser.find_element(By.CSS_SELECTOR, box).click()
        browser.find_element(By.ID, "generate-run").click()
        _wait(lambda: ": done" in browser.find_element(By.ID, "generate-status").text or _failed(browser), 180, "it")
        video = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#generate-video video"), 30, "the video")[0]
        duration = _wait(
            lambda: browser.execute_script("return arguments[0].readyState > 0 && arguments[0].duration", video),
            60,
            "the video's metadata",
        )
        assert duration > 0
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#generate-attention img"), 30, "the attention maps")
        generations = [j for j in JobQueue(Workspace(workspace), start=False).jobs() if j.kind == "generate"]
        assert generations[-1].command.count("--adapter") == 2, "both adapters composed in one generation"
        assert "--box" in generations[-1].command and "--attention-maps" in generations[-1].command
        served = generations[-1].outputs["video"]
        assert _status(f"{url}gradio_api/file={served}") == 200
        for outside in ("/etc/passwd", Path(__file__).resolve(), model / "model_index.json"):
            assert _status(f"{url}gradio_api/file={outside}") == 403, f"{outside} must not be served"
        if SCREENSHOTS:
            browser.save_screenshot(str(Path(SCREENSHOTS) / "app-generate.png"))

        browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Compare')]").click()
        browser.find_element(By.CSS_SELECTOR, "#compare-prompt textarea").send_keys("a red circle doing sks")
        browser.find_element(By.CSS_SELECTOR, "#compare-adapters input[name='first']").click()
        browser.find_element(By.ID, "compare-run").click()
        _wait(lambda: "dynamic degree" in browser.find_element(By.ID, "compare-report").text, 240, "the comparison")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#compare-video-1 video")) == 1
        if SCREENSHOTS:
            browser.save_screenshot(str(Path(SCREENSHOTS) / "app-compare.png"))

        browser.refresh()
        listed = lambda: any("newmove: first" in e.text for e in browser.find_elements(By.ID, "jobs"))  # noqa: E731
        _wait(listed, 60, "the jobs after a reload")
    finally:
        server.terminate()
        server.wait(30)
    restarted = Workspace(workspace)
    assert set(restarted.adapters()) == {"first", "second", "star"}
    assert all(job.state == DONE for job in JobQueue(restarted, start=False).jobs())
