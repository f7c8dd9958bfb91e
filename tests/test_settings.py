"""Defaults that fit the model: `motiontune.json` recommendations, their precedence, and where each value came from."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from motiontune.app import api
from motiontune.app.cli import main
from motiontune.errors import ConfigError
from motiontune.methods import METHODS
from motiontune.settings import ModelDefaults, Setting, generation_settings, training_settings

pytestmark = pytest.mark.usefixtures("single_thread")

RECOMMENDED = {
    "native": {"frames": 4, "height": 32, "width": 32},
    "generation": {"steps": 3, "guidance_scale": 5.0, "shift_window": [500, 200]},
    "training": {"newmove": {"steps": 2, "learning_rate": 0.002, "batch_size": 2, "options": {"spatial": "none"}}},
}


@pytest.fixture(scope="module")
def recommending_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with a `motiontune.json` that recommends native size, sampling and NewMove settings."""
    folder = tmp_path_factory.mktemp("models") / "recommending"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "motiontune.json").write_text(json.dumps(RECOMMENDED))
    return folder


def summary_settings(text: str) -> dict[str, tuple[str, str]]:
    """The settings block of a training summary: key -> (value, source)."""
    rows = [re.match(r"^  (\S+(?: \S+)?)\s+(\S+)\s+\((.*)\)$", line) for line in text.splitlines()]
    return {row[1]: (row[2], row[3]) for row in rows if row}


def test_precedence_given_then_model_then_method_then_fallback(recommending_model):
    defaults = ModelDefaults.read(recommending_model)
    given = {"learning_rate": Setting(0.5, "command line")}
    settings = training_settings("newmove", {"learning_rate": 1e-5, "steps": 3000, "frames": 16}, defaults, given)
    label = f"model ({recommending_model / 'motiontune.json'})"
    assert settings["learning_rate"] == Setting(0.5, "command line")
    assert settings["steps"] == Setting(2, label)
    assert settings["batch_size"] == Setting(2, label)
    assert settings["frames"] == Setting(4, label)  # the model's native size beats the method's paper frames
    assert settings["gradient_accumulation"] == Setting(1, "fallback")
    other = training_settings("motionmatcher", {"learning_rate": 5e-4, "steps": 400}, defaults, {})
    assert other["steps"] == Setting(400, "method default")  # the model recommends nothing for this method
    assert other["learning_rate"] == Setting(5e-4, "method default")


def test_a_folder_without_the_file_gets_the_papers_settings(tiny_model_dir):
    defaults = ModelDefaults.read(tiny_model_dir)
    assert defaults.path is None
    for name, cls in METHODS.items():
        settings = training_settings(name, cls.paper_settings, defaults, {})
        assert settings["learning_rate"] == Setting(cls.paper_settings["learning_rate"], "method default")
        if name != "pretrain":
            assert cls.paper_source, name
            assert settings["steps"].source == "method default", name
    sampling = generation_settings(defaults, {})
    assert (sampling["steps"].value, sampling["guidance_scale"].value) == (50, 9.0)
    assert sampling["shift_window"] == Setting((800, 600), "fallback")  # MotionBooth's official window


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON file"),
        (json.dumps([1, 2]), "must be a JSON object"),
        (json.dumps({"nativ": {}}), "unknown key(s) nativ"),
        (json.dumps({"training": {"newmove": {"steps": 0}}}), "'steps' must be a positive integer, got 0"),
        (json.dumps({"training": {"newmove": {"steps": 2.5}}}), "'steps' must be a positive integer"),
        (json.dumps({"training": {"newmove": {"learning_rate": "fast"}}}), "'learning_rate' must be a number"),
        (json.dumps({"training": {"newmove": {"lr": 1}}}), "unknown key(s) lr"),
        (json.dumps({"generation": {"guidance_scale": -1}}), "'guidance_scale' must be positive"),
        (json.dumps({"generation": {"debias": "half"}}), "'debias' must be one of none, object, hybrid, camera"),
        (json.dumps({"native": {"frames": True}}), "'frames' must be a number"),
        (json.dumps({"generation": {"shift_window": [100, 400]}}), "'shift_window' must be [START, END]"),
        (json.dumps({"generation": {"shift_window": "400,100"}}), "'shift_window' must be [START, END]"),
    ],
)
def test_a_malformed_model_file_is_one_error_naming_it(content, message, tmp_path):
    (tmp_path / "motiontune.json").write_text(content)
    with pytest.raises(ConfigError, match=r"motiontune\.json") as error:
        ModelDefaults.read(tmp_path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_train_uses_the_models_recommendations_and_says_so(recommending_model, motion_data, tmp_path, capsys):
    output = tmp_path / "run"
    argv = ["train", "--model", str(recommending_model), "--data", str(motion_data), "--output", str(output)]
    code = main([*argv, "--lr", "0.003", "--quiet", "--checkpoint-every", "0"])
    assert code == 0
    from motiontune.io.adapters import read_metadata

    meta = read_metadata(output / "adapter.safetensors")
    assert meta["training"]["steps"] == 2 and meta["training"]["batch_size"] == 2
    assert meta["training"]["learning_rate"] == 0.003
    assert meta["training"]["latent_shape"][1] == 4  # the model's native frames
    assert meta["hyperparameters"]["spatial"] == "none"  # the model's recommended method option
    summary = summary_settings(capsys.readouterr().out)
    model = f"model ({recommending_model / 'motiontune.json'})"
    assert summary["learning_rate"] == ("0.003", "command line")
    assert summary["steps"] == ("2", model)
    assert summary["frames"] == ("4", model)
    assert summary["gradient_accumulation"] == ("1", "fallback")
    assert summary["newmove spatial"] == ("none", model)


def test_command_line_and_config_file_beat_the_model(recommending_model, motion_data, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("steps: 1\nspatial: kv\n")
    output = tmp_path / "run"
    argv = ["train", "--config", str(config), "--model", str(recommending_model), "--data", str(motion_data)]
    assert main([*argv, "--output", str(output), "--batch-size", "1", "--quiet", "--checkpoint-every", "0"]) == 0
    summary = summary_settings(capsys.readouterr().out)
    assert summary["steps"] == ("1", "config file")
    assert summary["batch_size"] == ("1", "command line")
    assert summary["newmove spatial"] == ("kv", "config file")


def test_a_bad_recommended_option_names_the_model_file(recommending_model, motion_data, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(recommending_model, folder)
    (folder / "motiontune.json").write_text(json.dumps({"training": {"newmove": {"options": {"spatail": "kv"}}}}))
    code = main(["train", "--model", str(folder), "--data", str(motion_data), "--output", str(tmp_path / "o")])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("motiontune: error:") and "motiontune.json: training.newmove.options" in error
    assert "spatail" in error and "\n" not in error
    assert not (tmp_path / "o").exists()


def test_a_bad_command_line_option_is_not_blamed_on_the_model_file(recommending_model, motion_data, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(recommending_model, folder)
    (folder / "motiontune.json").write_text(json.dumps({"training": {"newmove": {"options": {"train_token": True}}}}))
    argv = ["train", "--model", str(folder), "--data", str(motion_data), "--output", str(tmp_path / "o")]
    assert main([*argv, "--spatial", "qkv"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "motiontune: error: spatial must be one of none, kv, all, got 'qkv'"
    assert not (tmp_path / "o").exists()


def test_generate_uses_the_models_sampling_settings(recommending_model, tmp_path, monkeypatch):
    import motiontune.generation as generation
    from motiontune.io.video import count_frames

    used = []
    original = generation.generate

    def spy(backbone, prompt, output, methods, settings, hooks):
        used.append(settings)
        return original(backbone, prompt, output, methods, settings, hooks)

    monkeypatch.setattr(generation, "generate", spy)
    paths = api.generate("a red circle moving left", tmp_path / "v.mp4", model=recommending_model, progress=False)
    api.generate("a red circle", tmp_path / "w.mp4", model=recommending_model, steps=2, progress=False)
    assert count_frames(paths["mp4"]) == 4  # the model's native frames
    assert (used[0].steps, used[0].guidance_scale) == (3, 5.0)  # the model's recommended sampling
    assert (used[1].steps, used[1].guidance_scale) == (2, 5.0)


def test_generate_shifts_the_camera_in_the_models_window_unless_told(recommending_model, tmp_path, monkeypatch):
    import motiontune.control as control

    windows = []
    original = control.control_hooks

    def spy(backbone, script, frames, timesteps, options, seed):
        windows.append(options.shift_window)
        return original(backbone, script, frames, timesteps, options, seed)

    monkeypatch.setattr(control, "control_hooks", spy)
    for window in (None, (900, 100)):
        api.generate(
            "a red circle",
            tmp_path / "v.mp4",
            model=recommending_model,
            camera_speed=(0.25, 0.0),
            shift_window=window,
            progress=False,
            overwrite=True,
        )
    assert windows == [(500, 200), (900, 100)]


@pytest.mark.parametrize(("name", "frames"), [("unet3d", 8), ("dit", 17)])
def test_the_shipped_models_recommendations_are_valid_for_every_method(name, frames):
    shipped = api.shipped_model_dir(name)
    defaults = ModelDefaults.read(shipped)
    assert defaults.native == {"frames": frames, "height": 32, "width": 32}
    assert generation_settings(defaults, {})["shift_window"].value == (400, 100)
    offered = {name for name, cls in METHODS.items() if not cls.internal}
    assert set(defaults.training) == offered  # a value for every method `train` offers
    for name, values in defaults.training.items():
        required = {"class_word": "dog"} if name == "motionbooth" else {}  # the subject's word comes from the user
        METHODS[name].config_from_dict({**required, **values["options"]})  # raises on an unknown or bad option
        settings = training_settings(name, METHODS[name].paper_settings, defaults, {})
        assert all(settings[key].source.startswith("model") for key in ("steps", "learning_rate", "frames")), name


def test_a_shipped_models_name_stands_for_its_folder_unless_a_local_folder_has_that_name(tmp_path, monkeypatch):
    assert api.model_folder("unet3d") == api.default_model_dir() == api.shipped_model_dir("unet3d")
    assert api.shipped_model_name(api.default_model_dir()) == "unet3d"
    assert api.shipped_model_name(api.model_folder("dit")) == "dit"
    assert (api.model_folder("dit") / "transformer").is_dir()  # the Wan-format DiT
    assert api.model_folder("zeroscope/") == api.model_folder("zeroscope")  # anything else as given
    monkeypatch.chdir(tmp_path)
    (tmp_path / "unet3d").mkdir()
    assert api.model_folder("unet3d") == tmp_path.joinpath("unet3d").relative_to(tmp_path)
    assert api.shipped_model_name("unet3d") is None
    with pytest.raises(ConfigError, match="no shipped model 'wan-14b' \\(shipped: unet3d, dit\\)"):
        api.shipped_model_dir("wan-14b")
