"""The adapter trust boundary (issue #15): a damaged or hostile adapter file is refused with one line that
names it, before anything is allocated from what it says and before the base model changes."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from motiontune.app.api import open_backbone
from motiontune.app.cli import main
from motiontune.errors import ConfigError, InputError
from motiontune.io.adapters import METADATA_KEY, read_adapter, save_adapter
from motiontune.lab.tiny import build_tiny_model
from motiontune.methods import create_method, load_adapter, load_adapters


@pytest.fixture
def backbone(unet3d_backbone):
    """The tiny UNet3D only: adapter checks read files and the contract;
    test_adapters.py round-trips on every backbone."""
    return unet3d_backbone


pytestmark = pytest.mark.usefixtures("single_thread")

LATENT_SHAPE = torch.Size([4, 4, 8, 8])
CONV_IN = "unet.conv_in.weight"
PROMPT = "a red square doing sks"
FAST = ["--steps", "2", "--frames", "2", "--height", "16", "--width", "16", "--quiet"]

#: changes a valid adapter's tensors in place and returns the metadata to write (any JSON value)
Change = Callable[[dict[str, torch.Tensor], dict], object]


def _metadata(**values) -> Change:
    """Set top-level metadata keys; a value of `...` removes the key."""

    def change(tensors: dict, metadata: dict) -> dict:
        metadata.update(values)
        return {key: value for key, value in metadata.items() if value is not ...}

    return change


def _options(**values) -> Change:
    def change(tensors: dict, metadata: dict) -> dict:
        metadata["hyperparameters"].update(values)
        return metadata

    return change


def _tensor(edit: Callable[[dict[str, torch.Tensor]], None]) -> Change:
    def change(tensors: dict, metadata: dict) -> dict:
        edit(tensors)
        return metadata

    return change


def _first_weight(tensors: dict) -> str:
    return next(key for key, tensor in tensors.items() if tensor.is_floating_point())


def _grid_key(tensors: dict) -> str:
    return next(key for key in tensors if key.endswith(".value_grid"))


def _with_non_finite(tensors: dict) -> None:
    key = _first_weight(tensors)
    flat = tensors[key].flatten().clone()
    flat[:3] = torch.tensor([math.nan, math.inf, -math.inf])
    tensors[key] = flat.view_as(tensors[key])


HOSTILE = [
    # (id, valid adapter it starts from, change, error, fragment of the one-line message after "<file>: ")
    ("metadata-list", "newmove", lambda t, m: [m], ConfigError, "adapter metadata must be a JSON object, got a list"),
    (
        "version-string",
        "newmove",
        _metadata(format_version="1"),
        ConfigError,
        "'format_version' must be an integer, got '1'",
    ),
    ("version-null", "newmove", _metadata(format_version=None), ConfigError, "must be an integer, got None"),
    ("version-bool", "newmove", _metadata(format_version=True), ConfigError, "must be an integer, got True"),
    ("version-0", "newmove", _metadata(format_version=0), ConfigError, "motiontune.adapter v0 is not readable"),
    ("format", "newmove", _metadata(format="other"), ConfigError, "adapter format other v1 is not readable"),
    ("method-number", "newmove", _metadata(method=3), ConfigError, "'method' must be a string, got a number"),
    ("no-backbone", "newmove", _metadata(backbone=...), ConfigError, "adapter metadata has no 'backbone'"),
    ("token-list", "newmove", _metadata(token=["sks"]), ConfigError, "'token' must be a string or null, got a list"),
    ("options-list", "newmove", _metadata(hyperparameters=[]), ConfigError, "'hyperparameters' must be an object"),
    ("training-string", "newmove", _metadata(training="x"), ConfigError, "'training' must be an object"),
    (
        "latent-shape",
        "newmove",
        _metadata(training={"latent_shape": [4, 4, "8", 8]}),
        ConfigError,
        "'training.latent_shape' must be 4 positive sizes",
    ),
    (
        "fingerprint-number",
        "newmove",
        _metadata(base_model={"fingerprint": 3}),
        ConfigError,
        "'base_model.fingerprint' must be a string",
    ),
    ("unknown-method", "newmove", _metadata(method="magic"), ConfigError, "unknown method 'magic'"),
    ("no-token", "newmove", _metadata(token=None), ConfigError, "adapter metadata has no token, but a newmove adapter"),
    ("rank-string", "lora", _options(lora_rank="8"), ConfigError, "lora_rank must be an int, got '8'"),
    ("rank-float", "lora", _options(lora_rank=8.0), ConfigError, "lora_rank must be an int, got 8.0"),
    ("alpha-nan", "newmove", _options(coarse_alpha=math.nan), ConfigError, "coarse_alpha must be a finite number"),
    ("flag-int", "newmove", _options(temporal=1), ConfigError, "temporal must be true or false, got 1"),
    (
        "rank-huge",
        "lora",
        _options(lora_rank=10**9),
        ConfigError,
        "lora_rank 1000000000 is larger than 32, the smallest width of the layers the LoRA adapts",
    ),
    ("rank-zero", "lora", _options(lora_rank=0), ConfigError, "lora_rank must be at least 1, got 0"),
    ("newmove-rank-zero", "newmove", _options(lora_rank=0), ConfigError, "lora_rank must be at least 1, got 0"),
    ("unknown-option", "lora", _options(magic=1), ConfigError, "unknown motiondirector option(s): magic"),
    ("levels", "motion-inversion", _options(levels="9"), ConfigError, "no temporal attention at level(s) [9]"),
    (
        "other-model",
        "newmove",
        _metadata(base_model={"fingerprint": "0" * 64}),
        ConfigError,
        "adapter was trained on another model (fingerprint 000000000000 vs this model's",
    ),
    (
        "base-weight",
        "newmove",
        _tensor(lambda t: t.update({CONV_IN: torch.zeros(32, 4, 3, 3)})),
        ConfigError,
        f"adapter tensor '{CONV_IN}' is not one a newmove adapter with these hyper-parameters holds",
    ),
    (
        "base-weight-in-lora",
        "lora",
        _tensor(lambda t: t.update({CONV_IN: torch.zeros(32, 4, 3, 3)})),
        ConfigError,
        f"adapter tensor '{CONV_IN}' is not one a motiondirector adapter",
    ),
    (
        "token-not-trained",
        "newmove",
        _tensor(lambda t: t.update({"text_encoder.token_embeddings": torch.zeros(1, 32)})),
        ConfigError,
        "adapter tensor 'text_encoder.token_embeddings' is not one",
    ),
    (
        "integer-weights",
        "newmove",
        _tensor(lambda t: t.update({(key := _first_weight(t)): t[key].to(torch.int64)})),
        ConfigError,
        "holds int64 values, expected floating-point ones",
    ),
    (
        "float-grid",
        "motion-inversion",
        _tensor(lambda t: t.update({(key := _grid_key(t)): t[key].float()})),
        ConfigError,
        "holds float32 values, expected integer ones",
    ),
    (
        "grid-shape",
        "motion-inversion",
        _tensor(lambda t: t.update({_grid_key(t): torch.tensor([2, 2, 2])})),
        ConfigError,
        "is not a latent grid (two positive sizes)",
    ),
    (
        "grid-huge",
        "motion-inversion",
        _tensor(lambda t: t.update({_grid_key(t): torch.tensor([100_000, 100_000])})),
        ConfigError,
        "model expects (10000000000, 32, ",
    ),
    (
        "frames-huge",
        "motion-inversion",
        _options(max_frames=10**9),
        ConfigError,
        "model expects (1, 1000000000, ",
    ),
    ("non-finite", "newmove", _tensor(_with_non_finite), ConfigError, "adapter holds 3 non-finite values"),
]


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: object) -> Path:
    header = {METADATA_KEY: json.dumps(metadata)}
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path), header)
    return path


def _hostile(valid: Path, change: Change, path: Path) -> Path:
    tensors, metadata = read_adapter(valid)
    return _write(path, tensors, change(tensors, metadata))


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Valid adapters of the tiny model, made without training: NewMove full weights, a MotionDirector LoRA
    and Motion Inversion embeddings."""
    folder = tmp_path_factory.mktemp("adapters")
    methods = {
        "newmove": create_method("newmove", open_backbone(tiny_model_dir, "cpu"), token="sks"),
        "lora": create_method("motiondirector", open_backbone(tiny_model_dir, "cpu"), {"lora_rank": 4}),
        "motion-inversion": create_method("motion-inversion", open_backbone(tiny_model_dir, "cpu")),
    }
    methods["motion-inversion"].bind_training_shape(LATENT_SHAPE)
    files = {}
    for name, method in methods.items():
        method.prepare_for_training()
        files[name] = save_adapter(folder / f"{name}.safetensors", method.adapter_tensors(), method.adapter_metadata())
    return files


def _model_state(backbone) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The base weights (by their names before any LoRA wraps a layer) and the denoiser's output on fixed inputs."""
    weights = {
        name.replace(".base_layer", ""): parameter.detach().clone()
        for name, parameter in backbone.denoiser.named_parameters()
        if ".lora_" not in name
    }
    weights["embedding"] = backbone.text_encoder.get_input_embeddings().weight.detach().clone()
    latents = torch.randn(1, backbone.latent_channels, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = backbone.predict_noise(latents, torch.tensor(500), backbone.encode_prompt([PROMPT]))
    return weights, output


def _assert_unchanged(backbone, before: tuple[dict[str, torch.Tensor], torch.Tensor]) -> None:
    weights, output = _model_state(backbone)
    assert weights.keys() == before[0].keys()
    assert all(torch.equal(weights[name], before[0][name]) for name in weights)
    assert torch.equal(output, before[1])


@pytest.mark.parametrize(
    ("valid", "change", "error", "fragment"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE]
)
def test_a_hostile_adapter_is_refused_by_name_and_the_model_stays_as_it_was(
    adapters, tiny_model_dir, tmp_path, valid, change, error, fragment
):
    path = _hostile(adapters[valid], change, tmp_path / "hostile.safetensors")
    backbone = open_backbone(tiny_model_dir, "cpu")
    before = _model_state(backbone)
    with pytest.raises(error) as refused:
        load_adapters([path], backbone)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert fragment in message, message
    _assert_unchanged(backbone, before)


def test_unreadable_files_are_input_errors_by_name(adapters, tiny_model_dir, tmp_path):
    backbone = open_backbone(tiny_model_dir, "cpu")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(adapters["newmove"].read_bytes()[:-100])
    for path, fragment in [
        (garbage, "not a safetensors adapter"),
        (truncated, "not a safetensors adapter"),
        (tmp_path / "missing.safetensors", "adapter file does not exist"),
    ]:
        with pytest.raises(InputError, match=rf"^{path}: {fragment}"):
            load_adapters([path], backbone)


def test_older_adapters_without_a_fingerprint_still_load(adapters, tiny_model_dir, tmp_path):
    path = _hostile(adapters["newmove"], _metadata(base_model=...), tmp_path / "old.safetensors")
    assert load_adapters([path], open_backbone(tiny_model_dir, "cpu"))[0].name == "newmove"


def test_the_same_adapter_given_twice_is_refused_naming_both(adapters, tiny_model_dir, tmp_path):
    path = adapters["newmove"]
    other_spelling = path.parent / ".." / path.parent.name / path.name
    copy = Path(shutil.copyfile(path, tmp_path / "copy.safetensors"))
    backbone = open_backbone(tiny_model_dir, "cpu")
    before = _model_state(backbone)
    for second in (path, other_spelling, copy):
        with pytest.raises(ConfigError, match=r"the same adapter given twice") as refused:
            load_adapters([path, second], backbone)
        assert str(refused.value).startswith(f"{path} and {second}: ")
    _assert_unchanged(backbone, before)

    tensors, metadata = read_adapter(path)
    key = _first_weight(tensors)
    tensors[key] = tensors[key] + 0.01
    changed = save_adapter(tmp_path / "changed.safetensors", tensors, metadata)
    assert changed.stat().st_size == path.stat().st_size  # same size, other bytes: two adapters
    assert len(load_adapters([path, changed], backbone)) == 2


def test_the_fingerprint_tells_models_apart_and_is_stable(tiny_model_dir, tmp_path):
    first, again = open_backbone(tiny_model_dir, "cpu"), open_backbone(tiny_model_dir, "cpu")
    assert first.fingerprint() == again.fingerprint()
    moved = shutil.copytree(tiny_model_dir, tmp_path / "moved")
    assert open_backbone(moved, "cpu").fingerprint() == first.fingerprint()
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert open_backbone(other, "cpu").fingerprint() != first.fingerprint()


def test_adapters_name_the_base_model_before_training_changed_it(tiny_model_dir):
    backbone = open_backbone(tiny_model_dir, "cpu")
    base = backbone.fingerprint()
    method = create_method("newmove", backbone, token="sks")
    method.prepare_for_training()
    with torch.no_grad():
        for parameter in method.trainable_parameters():
            parameter.add_(0.1)
    assert method.adapter_metadata()["base_model"] == {"fingerprint": base}


def test_an_adapter_of_another_model_loads_only_when_allowed(tiny_model_dir, tmp_path, capsys):
    other = open_backbone(build_tiny_model(tmp_path / "other", seed=1), "cpu")
    method = create_method("newmove", other, token="sks")
    path = save_adapter(tmp_path / "other.safetensors", method.adapter_tensors(), method.adapter_metadata())
    with pytest.raises(ConfigError, match="pass --allow-other-model to load it anyway"):
        load_adapter(path, open_backbone(tiny_model_dir, "cpu"))
    assert load_adapter(path, open_backbone(tiny_model_dir, "cpu"), allow_other_model=True).name == "newmove"

    command = ["generate", "--model", str(tiny_model_dir), "--adapter", str(path), "--prompt", PROMPT, *FAST]
    assert main([*command, "--output", str(tmp_path / "refused.mp4")]) == 2
    assert "--allow-other-model" in capsys.readouterr().err
    assert main([*command, "--output", str(tmp_path / "allowed.mp4"), "--allow-other-model"]) == 0
    assert (tmp_path / "allowed.mp4").is_file() and not (tmp_path / "refused.mp4").exists()


@pytest.mark.parametrize("case", ["metadata-list", "base-weight", "twice"])
def test_generate_refuses_a_hostile_adapter_in_one_line_and_writes_nothing(
    adapters, tiny_model_dir, tmp_path, capsys, case
):
    if case == "twice":
        given = [adapters["newmove"], Path(shutil.copyfile(adapters["newmove"], tmp_path / "copy.safetensors"))]
        expected, fragment = f"motiontune: error: {given[0]} and {given[1]}: ", "the same adapter given twice"
    else:
        _, valid, change, _, fragment = next(c for c in HOSTILE if c[0] == case)
        given = [_hostile(adapters[valid], change, tmp_path / "hostile.safetensors")]
        expected = f"motiontune: error: {given[0]}: "
    output = tmp_path / "out" / "video.mp4"
    adapter_options = [option for path in given for option in ("--adapter", str(path))]
    command = ["generate", "--model", str(tiny_model_dir), *adapter_options, "--prompt", PROMPT, *FAST]
    assert main([*command, "--output", str(output)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected) and fragment in lines[0], captured.err
    assert "Traceback" not in captured.err and not captured.out
    assert not output.parent.exists() or not any(output.parent.iterdir())


def test_options_of_the_wrong_type_are_refused_whatever_their_source(backbone):
    with pytest.raises(ConfigError, match=r"^lora_rank must be an int, got '8'$"):
        create_method("motiondirector", backbone, {"lora_rank": "8"})
    with pytest.raises(ConfigError, match=r"^regularization_share must be a finite number or unset, got 'x'$"):
        create_method("newmove", backbone, {"regularization_share": "x"}, token="sks")
    with pytest.raises(ConfigError, match=r"^train_token must be true or false, got 'yes'$"):
        create_method("motiondirector", backbone, {"train_token": "yes"})
    assert create_method("motiondirector", backbone, {"lora_rank": 4, "lora_dropout": 0}).config.lora_dropout == 0
    assert create_method("newmove", backbone, {"regularization_share": None}, token="sks")


def test_the_generate_help_documents_allow_other_model(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "--allow-other-model" in capsys.readouterr().out
