"""`motiontune evaluate` and its metrics, validated where the answer is known: a video against itself and its time
reverse, ShapeWorld clips whose trajectories are known exactly, camera pans of known speed, and CLIP / DINO
plumbing on tiny random models built from config (no weights are downloaded)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from transformers import (
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    Dinov2Config,
    Dinov2Model,
)

from motiontune.app.cli import main
from motiontune.errors import ConfigError, InputError
from motiontune.io.video import write_video
from motiontune.lab.evaluation import motion_fidelity as analytic_motion_fidelity
from motiontune.lab.shapeworld import KNOWN_MOTIONS, NOVEL_MOTIONS, Clip, render
from motiontune.lab.tiny import build_word_tokenizer
from motiontune.metrics import embeddings, flow, tracks

FRAMES, SIZE = 16, 64


def _clip(motion: str, shape: str = "square", **options) -> np.ndarray:
    options = {"colour": "red", "background": "white", "size": "large", **options}
    return render(Clip(shape, motion=motion, **options), FRAMES, SIZE).frames


def _ranks(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    for value in np.unique(values):
        ranks[values == value] = ranks[values == value].mean()
    return ranks


def test_motion_fidelity_is_one_against_itself_and_falls_for_the_time_reverse():
    tracker = tracks.LucasKanadeTracker()
    for motion in ("zigzag", "diagonal", "right"):
        video = _clip(motion)
        found = tracker(video)
        assert len(found.complete(moving=0.02)) >= 1
        assert tracks.motion_fidelity(found, found) == pytest.approx(1.0)
        assert tracks.motion_fidelity(found, tracker(video[::-1].copy())) < -0.9


def test_motion_fidelity_ranks_shapeworld_motions_as_the_analytic_metric_does():
    """Reference: each novel motion; generated: every motion, another shape, colour, background and start. The
    track score (corners + Lucas-Kanade) against the analytic centre-track score: Spearman >= 0.95 (measured
    0.996 / 0.963 / 0.996 / 0.988 on zigzag / orbit / bounce / diagonal)."""
    tracker = tracks.LucasKanadeTracker()
    for reference_motion in NOVEL_MOTIONS:
        reference = render(Clip("square", "red", "white", reference_motion, "large"), FRAMES, SIZE)
        reference_tracks = tracker(reference.frames)
        measured, analytic = [], []
        for motion in KNOWN_MOTIONS + NOVEL_MOTIONS:
            clip = render(Clip("triangle", "blue", "black", motion, "large", start=(0.45, 0.55)), FRAMES, SIZE)
            measured.append(tracks.motion_fidelity(reference_tracks, tracker(clip.frames)))
            analytic.append(analytic_motion_fidelity(clip.centres, reference.centres))
        rank_correlation = np.corrcoef(_ranks(np.array(measured)), _ranks(np.array(analytic)))[0, 1]
        assert rank_correlation >= 0.95, reference_motion
        assert np.argmax(measured) == (KNOWN_MOTIONS + NOVEL_MOTIONS).index(reference_motion)


def test_dmt_formula_on_hand_made_tracks():
    """Two reference tracks (right; down), one generated track moving right then down: corr with the first is
    (1 + 0) / 2, with the second (0 + 1) / 2; one-sided MF = max = 0.5. A generated video with no moving track
    scores 0, a reference without one gives NaN."""
    right = np.array([[0, 0], [10, 0], [20, 0]], float)
    down = np.array([[0, 0], [0, 10], [0, 20]], float)
    turn = np.array([[0, 0], [10, 0], [10, 10]], float)
    reference = tracks.Tracks(np.stack([right, down]) + 20, np.ones((2, 3), bool), (100, 100))
    generated = tracks.Tracks(turn[None] + 20, np.ones((1, 3), bool), (100, 100))
    assert tracks.motion_fidelity(reference, generated) == pytest.approx(0.5)
    still = tracks.Tracks(np.full((1, 3, 2), 30.0), np.ones((1, 3), bool), (100, 100))
    assert tracks.motion_fidelity(reference, still) == 0.0
    assert np.isnan(tracks.motion_fidelity(still, generated))
    # two generated tracks both moving right: each finds the reference's right track (one-sided 1); the reference's
    # down track finds none of them (0), so the two-sided score is (1 + (1 + 0) / 2) / 2
    only_right = tracks.Tracks(np.stack([right, right + 5]) + 20, np.ones((2, 3), bool), (100, 100))
    assert tracks.motion_fidelities(reference, only_right) == pytest.approx((1.0, 0.75))
    assert tracks.motion_fidelity(reference, only_right, two_sided=True) == pytest.approx(0.75)


def test_a_tracker_plugs_in_by_name_and_bad_names_are_one_line():
    assert isinstance(tracks.load_tracker(None), tracks.LucasKanadeTracker)
    assert isinstance(tracks.load_tracker("motiontune.metrics.tracks:LucasKanadeTracker"), tracks.LucasKanadeTracker)
    with pytest.raises(ConfigError, match="expected 'module:factory'"):
        tracks.load_tracker("nothing")
    with pytest.raises(ConfigError, match="cannot load it"):
        tracks.load_tracker("motiontune.metrics.tracks:NoSuchTracker")


@pytest.mark.parametrize("speed", [(-0.3, 0.1), (0.2, 0.1), (0.4, -0.1)])
def test_camera_travel_of_a_known_pan_is_measured_within_0_02_of_the_frame(speed):
    video = _clip("static", "circle", background="textured", size="small", camera=speed, texture_seed=3)
    travel = flow.camera_motion(video)
    assert flow.camera_error(travel, speed) < 0.02
    assert flow.camera_error(travel, (-speed[0], -speed[1])) > 0.3
    np.testing.assert_allclose(flow.camera_motion(video, flows=flow.optical_flow(video)), travel)


def test_dynamic_degree_tells_a_still_video_from_a_moving_one():
    still = flow.dynamic_degree(_clip("static", background="textured"))
    moving = flow.dynamic_degree(_clip("static", background="textured", camera=(0.4, 0.0)))
    assert not still["dynamic"] and still["flow_magnitude"] < 1e-3
    assert moving["dynamic"] and moving["flow_magnitude"] > 0.02


@pytest.fixture(scope="module")
def embedding_folders(tmp_path_factory):
    """A tiny random CLIP and DINO v2, each saved with its processor, as users keep the real ones."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tokenizer = build_word_tokenizer(["a", "red", "square", "moving", "right", "blue"], 16)
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    text.update(num_attention_heads=4, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id)
    text.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    vision.update(image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(root / "clip")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root / "clip")
    dino = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    dino.update({"image_size": 32, "patch_size": 8})
    Dinov2Model(dino).save_pretrained(root / "dino")
    processor = BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(root / "dino")
    return root / "clip", root / "dino"


def test_clip_scores_match_a_hand_computation(embedding_folders):
    clip, reason = embeddings.load_embedder("CLIP", embedding_folders[0])
    assert reason is None
    video = _clip("right")
    prompt = "a red square moving right"
    processor = clip.processor
    with torch.no_grad():
        pixels = processor(images=list(video), return_tensors="pt")["pixel_values"]
        image = clip.model.get_image_features(pixel_values=pixels).pooler_output
        tokens = processor(text=[prompt], return_tensors="pt", padding=True)
        text = clip.model.get_text_features(**tokens).pooler_output
    by_hand = torch.nn.functional.cosine_similarity(image, text).numpy()
    frames = clip.images(list(video))
    np.testing.assert_allclose(embeddings.text_similarity(frames, clip.texts([prompt])[0]), by_hand, atol=1e-5)
    consecutive = torch.nn.functional.cosine_similarity(image[:-1], image[1:]).numpy()
    np.testing.assert_allclose(embeddings.consecutive_similarity(frames), consecutive, atol=1e-5)
    still = clip.images(list(np.repeat(video[:1], 4, axis=0)))
    np.testing.assert_allclose(embeddings.consecutive_similarity(still), 1.0, atol=1e-5)
    np.testing.assert_allclose(embeddings.reference_similarity(frames, frames), 1.0, atol=1e-5)
    # a reference of another length is read at the same points in time: a 2x slower copy matches frame for frame
    slower = clip.images(list(np.repeat(video, 2, axis=0)[: 2 * len(video) - 1]))
    np.testing.assert_allclose(embeddings.reference_similarity(frames, slower), 1.0, atol=1e-5)
    assert embeddings.matching_frames(9, 5).tolist() == [0, 2, 4, 6, 8]


def test_subject_similarity_crops_each_frame_at_its_box(embedding_folders):
    dino, _ = embeddings.load_embedder("DINO", embedding_folders[1])
    video = _clip("right")
    boxes = np.tile([0.25, 0.25, 0.75, 0.75], (FRAMES, 1))
    crops = embeddings.box_crops(video, boxes)
    assert crops[0].shape == (32, 32, 3)
    subject = video[0, 16:48, 16:48]
    subject_embedding = dino.images([subject])
    scores = embeddings.subject_similarity(dino.images(crops), subject_embedding)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    whole = embeddings.subject_similarity(dino.images(list(video)), subject_embedding)
    assert whole.shape == (FRAMES,) and not np.allclose(whole, scores)


def test_missing_model_folders_skip_their_scores_with_a_reason_and_broken_ones_are_refused(tmp_path):
    assert embeddings.load_embedder("CLIP", None) == (None, "CLIP scores skipped: no --clip folder given")
    model, reason = embeddings.load_embedder("DINO", tmp_path / "nowhere")
    assert model is None and "is not a model folder (no config.json)" in reason
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(InputError, match=r"--clip .*broken: cannot load the model"):
        embeddings.load_embedder("CLIP", tmp_path / "broken")


def test_evaluate_command_writes_every_score_its_inputs_allow(embedding_folders, tmp_path, capsys):
    reference, same, other = _clip("zigzag"), _clip("zigzag", colour="blue"), _clip("left")
    paths = []
    for name, video in (("reference", reference), ("same", same), ("other", other)):
        paths.append(write_video(video, tmp_path / f"{name}.mp4", crf=1))
    subjects = tmp_path / "subject"
    subjects.mkdir()
    from PIL import Image

    Image.fromarray(reference[0, 16:48, 16:48]).save(subjects / "0.png")
    script = tmp_path / "boxes.json"
    boxes = [[[0.1, 0.1, 0.6, 0.6]], [[0.4, 0.4, 0.9, 0.9]]]
    script.write_text(json.dumps({"prompt": "a red square", "phrases": ["red square"], "bbox": boxes}))
    output = tmp_path / "report"
    arguments = ["evaluate", str(paths[1]), str(paths[2]), "--reference", str(paths[0]), "--output", str(output)]
    arguments += ["--prompt", "a red square moving right", "--subject-images", str(subjects), "--boxes", str(script)]
    arguments += ["--camera-speed", "0,0", "--clip", str(embedding_folders[0]), "--dino", str(embedding_folders[1])]
    assert main([*arguments, "--quiet"]) == 0
    report = json.loads((output / "metrics.json").read_text())
    same_scores, other_scores = (row["scores"] for row in report["videos"])
    assert set(same_scores) == {
        "clip_t",
        "temporal_consistency_clip",
        "temporal_consistency_dino",
        "r_clip",
        "r_dino",
        "motion_fidelity",
        "leakage_clip",
        "leakage_dino",
        "camera_error",
        "dynamic_degree",
    }
    assert same_scores["motion_fidelity"] == pytest.approx(1.0) and other_scores["motion_fidelity"] < 0.5
    assert np.isfinite(same_scores["camera_error"]) and same_scores["leakage_clip"] > 0.9
    assert len(report["videos"][0]["per_frame"]["clip_t"]) == FRAMES
    scores = [same_scores["motion_fidelity"], other_scores["motion_fidelity"]]
    assert report["mean"]["motion_fidelity"] == pytest.approx(np.mean(scores))
    assert "CLIP-T (prompt)" in (output / "report.md").read_text()
    for name in ("per-frame.png", "tracks-00-same.png", "tracks-01-other.png"):
        assert (output / name).stat().st_size > 0
    assert "report:" in capsys.readouterr().out

    assert main([*arguments, "--quiet"]) == 2
    assert "already holds a report; pass --overwrite" in capsys.readouterr().err
    bare = tmp_path / "bare"
    assert main(["evaluate", str(paths[1]), "--output", str(bare), "--quiet"]) == 0
    skipped = json.loads((bare / "metrics.json").read_text())["skipped"]
    assert "CLIP scores skipped: no --clip folder given" in skipped
    assert set(json.loads((bare / "metrics.json").read_text())["mean"]) == {"dynamic_degree"}


def test_evaluate_refuses_bad_inputs_in_one_line_and_writes_nothing(tmp_path, capsys):
    video = write_video(_clip("right"), tmp_path / "v.mp4")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\nthree\n")
    cases = [
        (["--prompts", str(prompts)], "--prompts .*prompts.txt: 3 prompts for 1 videos"),
        (["--reference", str(tmp_path / "missing.mp4")], "missing.mp4"),
        (["--subject-images", str(tmp_path / "none")], "--subject-images .*none: not a folder"),
        (["--camera-speed", "1,x"], "--camera-speed '1,x': expected two comma-separated numbers"),
        (["--tracker", "os:nothing_here"], "--tracker 'os:nothing_here': cannot load it"),
    ]
    for extra, message in cases:
        output = tmp_path / "out"
        assert main(["evaluate", str(video), "--output", str(output), "--quiet", *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and re.search(message, error), error
        assert not output.exists()


def test_real_reference_videos_score_sanely(reference_videos):
    """car_turn against itself scores 1, against its time reverse below 0; every video moves (dynamic degree)."""
    from motiontune.io.video import read_native_video

    video = read_native_video(reference_videos / "car_turn.mp4")
    tracker = tracks.LucasKanadeTracker()
    found = tracker(video)
    assert tracks.motion_fidelity(found, found) == pytest.approx(1.0)
    assert tracks.motion_fidelity(found, tracker(video[::-1].copy())) < 0
    assert flow.dynamic_degree(video)["dynamic"]


def test_what_a_shapeworld_prompt_asks_for():
    from motiontune.app.evaluate import requested_attributes

    assert requested_attributes("a red circle moving left on a white background") == {
        "colour": "red",
        "shape": "circle",
        "background": "white",
        "motion": "left",
    }
    assert requested_attributes("A green triangle moving in an orbit on a textured background")["motion"] == "orbit"
    assert requested_attributes("a blue square doing sks on a gray background") == {
        "colour": "blue",
        "shape": "square",
        "background": "gray",
    }
    assert requested_attributes("a photo of a dog") == {}


def test_evaluate_shapeworld_reads_each_video_and_marks_what_the_prompt_asked_otherwise(tmp_path, capsys):
    """A rendered red square moving right read against its own caption (all right) and against a prompt that asks
    for a blue circle moving left (colour, shape and motion marked)."""
    clip = Clip("square", "red", "white", "right")
    video = write_video(render(clip, 16, 64).frames, tmp_path / "right.mp4")
    (tmp_path / "prompts.txt").write_text(f"{clip.caption()}\na blue circle moving left on a white background\n")
    arguments = ["evaluate", str(video), str(video), "--prompts", str(tmp_path / "prompts.txt"), "--shapeworld"]
    assert main([*arguments, "--output", str(tmp_path / "report"), "--quiet"]) == 0
    rows = json.loads((tmp_path / "report" / "metrics.json").read_text())["videos"]
    assert {key: rows[0]["shapeworld"][key] for key in ("colour", "shape", "background", "motion")} == {
        "colour": "red",
        "shape": "square",
        "background": "white",
        "motion": "right",
    }
    assert all(rows[0]["shapeworld"]["correct"].values())
    assert rows[1]["shapeworld"]["correct"] == {"colour": False, "shape": False, "background": True, "motion": False}
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| right.mp4 | red * (blue) | square * (circle) | white | right * (left) |" in report
    assert "ShapeWorld reading" in capsys.readouterr().out
