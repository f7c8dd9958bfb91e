"""benchmarks/box_edit_reach.py: which tokens each edit reaches, and one score pair per edit."""

from __future__ import annotations

import pytest

from motiontune.app.api import open_backbone

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def box_edit_reach(load_benchmark):
    return load_benchmark("box_edit_reach")


def test_edits_reach_the_subject_then_the_end_tokens_then_every_later_token(box_edit_reach):
    backbone = open_backbone(None)
    prompt = "a red circle moving right on a white background"
    assert backbone.tokenize([prompt])[0].tolist()[10] == backbone.tokenizer.eos_token_id

    def tokens(edit):
        return box_edit_reach.edited_tokens(backbone, prompt, "red circle", edit)

    assert tokens("official") == tokens("keep other words") == [2, 3]
    assert tokens("subject + end tokens") == [2, 3, 10, 11, 12, 13, 14, 15]
    assert tokens("every token from the subject on") == list(range(2, 16))


def test_every_edit_gets_an_iou_with_the_request_and_with_the_unedited_video(box_edit_reach):
    results = box_edit_reach.reach(None, requests=1, steps=2, amplify_until=700, seed=0)
    assert list(results) == ["none", *box_edit_reach.EDITS]
    assert results["none"]["unedited"] == 1.0
    for row in results.values():
        assert set(row) == {"requested", "unedited"}
        assert all(0.0 <= value <= 1.0 for value in row.values())


def test_a_missing_model_folder_is_one_line_and_exit_2(box_edit_reach, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("sys.argv", ["box_edit_reach.py", "--model", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit) as exit_info:
        box_edit_reach.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"box_edit_reach.py: error: {tmp_path / 'nowhere'}: model folder does not exist"
    ]
