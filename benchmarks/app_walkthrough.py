"""The app's done-when walkthrough on the shipped ShapeWorld model, in Debian's Chromium: teach NewMove the bundled
zigzag example at the model's defaults, generate with it, compare with and without it; prints how long each step
took and what the ShapeWorld metrics read from the videos, and saves a screenshot of each tab.

    OMP_NUM_THREADS=1 python benchmarks/app_walkthrough.py --screenshots docs/images --workspace /tmp/walkthrough
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from motiontune.control import parse_box_option
from motiontune.io.video import read_native_video
from motiontune.lab.evaluation import evaluate_video, mean_box_iou
from motiontune.lab.shapeworld import Clip

BOXED_PROMPT = "a red circle moving right on a white background"
#: two keyframe boxes drawn on the canvas (corner clicks, fractions of the frame): top left, then bottom right
CORNERS = ((0.05, 0.05), (0.45, 0.45), (0.55, 0.55), (0.95, 0.95))

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--screenshots", type=Path, required=True, help="folder for app-teach/generate/compare.png")
parser.add_argument("--workspace", type=Path, required=True, help="a new workspace folder")
parser.add_argument("--port", type=int, default=7871)
args = parser.parse_args()
out, workspace, port = args.screenshots, args.workspace, args.port
app = [sys.executable, "-m", "motiontune.app.cli", "app", "--workspace", str(workspace), "--port", str(port)]
server = subprocess.Popen(app)
options = webdriver.ChromeOptions()
for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1500"):
    options.add_argument(argument)
options.binary_location = "/usr/bin/chromium"
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
timings = {}


def wait(condition, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        try:
            value = condition()
        except Exception:  # the page is still rendering
            value = None
        if value:
            return value
        time.sleep(1)
    raise SystemExit(f"timed out waiting for {what}")


try:
    wait(lambda: socket.create_connection(("127.0.0.1", port), 1) or True, 120, "the app")
    d.get(f"http://127.0.0.1:{port}/")
    wait(lambda: d.find_elements(By.CSS_SELECTOR, "#teach-example input"), 60, "page")
    box = d.find_element(By.CSS_SELECTOR, "#teach-example input")
    box.click()
    time.sleep(1)
    opts = d.find_elements(By.CSS_SELECTOR, "ul[role=listbox] li")
    next(o for o in opts if "zigzag" in o.text).click()
    d.find_element(By.CSS_SELECTOR, "#teach-name textarea, #teach-name input").send_keys("zigzag-newmove")
    started = time.time()
    d.find_element(By.ID, "teach-train").click()
    wait(lambda: "done" in d.find_element(By.ID, "teach-status").text, 900, "training")
    timings["train s"] = round(time.time() - started, 1)
    d.save_screenshot(str(out / "app-teach.png"))
    d.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Generate')]").click()
    d.find_element(By.CSS_SELECTOR, "#generate-prompt textarea").send_keys(
        "a blue square doing sks on a white background"
    )
    wait(lambda: d.find_elements(By.CSS_SELECTOR, "#generate-adapters input[name='zigzag-newmove']"), 30, "adapter")
    d.find_element(By.CSS_SELECTOR, "#generate-adapters input[name='zigzag-newmove']").click()
    started = time.time()
    d.find_element(By.ID, "generate-run").click()
    wait(lambda: ": done" in d.find_element(By.ID, "generate-status").text, 300, "generate")
    timings["generate s"] = round(time.time() - started, 1)
    # then steer a subject along a path drawn on the canvas, and show where its words look
    d.find_element(By.CSS_SELECTOR, "#generate-adapters input[name='zigzag-newmove']").click()
    prompt = d.find_element(By.CSS_SELECTOR, "#generate-prompt textarea")
    prompt.clear()
    prompt.send_keys(BOXED_PROMPT)
    d.find_element(By.CSS_SELECTOR, "#box-words textarea, #box-words input").send_keys("red circle")
    canvas = d.find_element(By.CSS_SELECTOR, "#box-canvas img")
    for x, y in CORNERS:
        offset = (round((x - 0.5) * canvas.size["width"]), round((y - 0.5) * canvas.size["height"]))
        ActionChains(d).move_to_element_with_offset(canvas, *offset).click().perform()
        time.sleep(1.5)
    d.find_element(By.CSS_SELECTOR, "#attention-words textarea, #attention-words input").send_keys("red circle")
    started = time.time()
    d.find_element(By.ID, "generate-run").click()
    wait(lambda: "red circle" in d.find_element(By.ID, "generate-status").text, 30, "the boxed generation queued")
    wait(lambda: ": done" in d.find_element(By.ID, "generate-status").text, 300, "the boxed generation")
    timings["boxed generate s"] = round(time.time() - started, 1)
    time.sleep(4)
    d.save_screenshot(str(out / "app-generate.png"))
    d.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Compare')]").click()
    d.find_element(By.CSS_SELECTOR, "#compare-prompt textarea").send_keys(
        "a yellow square doing sks on a black background"
    )
    d.find_element(By.CSS_SELECTOR, "#compare-adapters input[name='zigzag-newmove']").click()
    d.find_element(By.ID, "compare-run").click()
    wait(lambda: "dynamic degree" in d.find_element(By.ID, "compare-report").text, 600, "compare")
    time.sleep(4)
    d.save_screenshot(str(out / "app-compare.png"))
finally:
    d.quit()
    server.terminate()
print(json.dumps(timings))
for record in sorted((workspace / "jobs").glob("*/job.json"), key=lambda p: json.loads(p.read_text())["created"]):
    job = json.loads(record.read_text())
    if job["kind"] == "generate" and "--box" in job["command"]:
        video = read_native_video(job["outputs"]["video"])
        path = parse_box_option(job["command"][job["command"].index("--box") + 1])
        result = evaluate_video(video, Clip("circle", "red", "white", "right"))
        iou = mean_box_iou(result["boxes"], path.boxes(len(video)).numpy())
        print(f"{job['title']}: boxes {path.keyframes}, mean box IoU {iou:.2f}, motion {result['motion']}")
    elif job["kind"] == "generate":
        words = job["title"].split()
        clip = Clip(
            "square", "blue" if "blue" in words else "yellow", "white" if "white" in words else "black", "zigzag"
        )
        result = evaluate_video(read_native_video(job["outputs"]["video"]), clip)
        print(f"{job['title']}: motion {result['motion']}, colour {result['colour']}, shape {result['shape']}")
