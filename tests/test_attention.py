"""The attention controller: recording, box edits, temporal embeddings, and the SDPA fast path."""

from __future__ import annotations

import pytest
import torch

from motiontune.attention import BoxEdit, RowBoxEdits, SubjectBox, TemporalEmbedding, box_span


def cross_site(backbone) -> str:
    """The first cross-attention of the down path's level 0 (the full latent grid)."""
    return next(s.name for s in backbone.sites if s.kind == "cross" and s.block == "down" and s.level == 0)


def temporal_site(backbone) -> str:
    """The first temporal attention of the down path's level 1 (level 0 on a one-level transformer)."""
    level = min(1, backbone.num_levels - 1)
    return next(s.name for s in backbone.sites if s.kind == "temporal" and s.block == "down" and s.level == level)


def by_hand(backbone) -> None:
    """Tests that compute a per-frame UNet's temporal attention by hand (`(B*h*w, F, C)` inputs) skip a diffusion
    transformer's 3D attention, whose hand computations live in test_wan.py."""
    if backbone.controller.sites[temporal_site(backbone)].layout != "pixels":
        pytest.skip("hand computation of a pixels-layout temporal attention")


def _inputs(backbone, batch=1, frames=4, hw=(16, 16)):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 4, frames, *hw, generator=generator)
    text = backbone.encode_prompt(["a red sks square"] * batch)
    return latents, text


def test_recording_matches_fast_path_and_probabilities_sum_to_one(backbone):
    latents, text = _inputs(backbone)
    fast = backbone.predict_noise(latents, torch.tensor(300), text)
    with backbone.controller.record(lambda site: site.kind in ("cross", "temporal")) as maps:
        explicit = backbone.predict_noise(latents, torch.tensor(300), text)
    assert torch.allclose(fast, explicit, atol=1e-5)
    cross = [backbone.controller.sites[name] for name in maps if backbone.controller.sites[name].kind == "cross"]
    assert len(cross) == len(backbone.controller.sites_of("cross"))
    for name, probs in maps.items():
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5), name
        assert not probs.requires_grad


def test_recording_with_gradients_reaches_the_input(backbone):
    latents, text = _inputs(backbone)
    latents.requires_grad_(True)
    with backbone.controller.record(lambda site: site.name == temporal_site(backbone), with_grad=True) as maps:
        backbone.predict_noise(latents, torch.tensor(300), text)
    maps[temporal_site(backbone)][..., 0, -1].sum().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_box_edit_bias_matches_the_hand_computed_case():
    """MotionBooth's check: alpha 10, a 45-of-180-cell box gives +7.5 inside for the subject token,
    -inf outside it, -inf for other words everywhere, and leaves start/end/padding tokens alone."""
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    edit = BoxEdit([SubjectBox([2], boxes)], strength=10.0, amplify=True, word_positions=[1, 2, 3])
    bias, suppress = edit.bias_and_mask(frames=1, grid=(10, 18), tokens=8)
    bias, suppress = bias.view(10, 18, 8), suppress.view(10, 18, 8)
    inside = torch.zeros(10, 18, dtype=torch.bool)
    inside[:5, :9] = True
    assert inside.sum() == 45
    assert torch.allclose(bias[..., 2][inside], torch.full((45,), 7.5))
    assert torch.all(bias[..., 2][~inside] == 0) and torch.all(bias[..., [0, 1, 3, 4, 5, 6, 7]] == 0)
    assert torch.all(suppress[..., 2] == ~inside)
    assert torch.all(suppress[..., [1, 3]]) and not suppress[..., [0, 4, 5, 6, 7]].any()
    kept = BoxEdit([SubjectBox([2], boxes)], strength=10.0, amplify=False, suppress_other_words=False)
    bias, suppress = kept.bias_and_mask(frames=1, grid=(10, 18), tokens=8)
    assert torch.all(bias == 0) and torch.all(suppress.view(10, 18, 8)[..., 2] == ~inside)
    assert not suppress.view(10, 18, 8)[..., [0, 1, 3, 4]].any()


def test_a_box_narrower_than_a_cell_keeps_the_cell_of_its_centre():
    """Official rounding: [0.15, 0.35] covers cells 1-2 of 8 but none of 4 (round(0.6) = round(1.4) = 1); the
    edit then keeps the cell holding the centre. A box outside the frame covers nothing."""
    assert box_span(0.15, 0.35, 8) == (1, 3)
    assert box_span(0.15, 0.35, 4) == (1, 2)
    assert box_span(0.9, 1.2, 4) == (3, 4)
    assert box_span(-0.3, -0.1, 4) == (0, 0) and box_span(1.1, 1.3, 4) == (4, 4)
    edit = BoxEdit([SubjectBox([2], torch.tensor([[0.15, 0.15, 0.35, 0.35]]))], word_positions=[1, 2])
    bias, suppress = edit.bias_and_mask(frames=1, grid=(4, 4), tokens=6)
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[1, 1] = True
    assert torch.all(suppress.view(4, 4, 6)[..., 2] == ~inside)
    assert torch.allclose(bias.view(4, 4, 6)[..., 2][inside], torch.tensor([10.0 * 15 / 16]))


def test_row_edits_give_each_batch_row_its_own_boxes():
    first = BoxEdit([SubjectBox([2], torch.tensor([[0.0, 0.0, 0.5, 0.5]]))], word_positions=[1, 2, 3])
    second = BoxEdit([SubjectBox([1], torch.tensor([[0.5, 0.5, 1.0, 1.0]]))], amplify=False)
    rows = RowBoxEdits([first, None, second])
    bias, suppress = rows.rows_bias_and_mask(torch.ones(3, dtype=torch.bool), 1, (4, 4), 6)
    assert bias.shape == suppress.shape == (3, 1, 16, 6)
    for row, edit in ((0, first), (2, second)):
        expected_bias, expected_suppress = edit.bias_and_mask(1, (4, 4), 6)
        assert torch.equal(bias[row], expected_bias) and torch.equal(suppress[row], expected_suppress)
    assert not bias[1].any() and not suppress[1].any()
    shared, shared_suppress = first.rows_bias_and_mask(torch.tensor([False, True]), 1, (4, 4), 6)
    assert not shared[0].any() and not shared_suppress[0].any() and torch.equal(shared[1], bias[0])
    with pytest.raises(ValueError, match="3 row edits for a batch of 2"):
        rows.rows_bias_and_mask(torch.ones(2, dtype=torch.bool), 1, (4, 4), 6)


def test_row_edits_change_only_their_rows_attention(backbone):
    latents, text = _inputs(backbone, batch=2, frames=2)
    token = backbone.phrase_positions("a red sks square", "sks")
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5]] * 2)
    site = cross_site(backbone)
    with backbone.controller.record(lambda s: s.name == site) as maps:
        backbone.predict_noise(latents, torch.tensor(300), text)
    plain = maps[site].clone()
    rows = RowBoxEdits([None, BoxEdit([SubjectBox(token, boxes)], strength=5.0)])
    with backbone.controller.record(lambda s: s.name == site) as maps, backbone.controller.editing(rows):
        backbone.predict_noise(latents, torch.tensor(300), text)
    assert torch.allclose(maps[site][:1], plain[:1], atol=1e-6)
    edited = maps[site][1][..., token].sum(-1)  # (F, heads, h, w)
    h, w = edited.shape[-2:]
    assert torch.all(edited[:, :, h // 2 :] == 0) and torch.all(edited[:, :, :, w // 2 :] == 0)
    assert torch.all(edited[:, :, : h // 2, : w // 2] > 0)


def test_box_edit_moves_subject_attention_into_the_box_per_frame(backbone):
    frames = 2
    latents, text = _inputs(backbone, frames=frames)
    token = backbone.phrase_positions("a red sks square", "sks")
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    edit = BoxEdit([SubjectBox(token, boxes)], strength=5.0, word_positions=backbone.word_positions("a red sks square"))
    site = cross_site(backbone)

    def subject_map(with_edit):
        controller = backbone.controller
        with (
            controller.record(lambda s: s.name == site) as maps,
            controller.editing(edit if with_edit else None),
        ):
            backbone.predict_noise(latents, torch.tensor(300), text)
        return maps[site][0][..., token].sum(-1).mean(1)  # (F, h, w)

    plain, edited = subject_map(False), subject_map(True)
    h, w = plain.shape[-2:]
    inside = torch.zeros(frames, h, w, dtype=torch.bool)
    inside[0, : h // 2, : w // 2] = True
    inside[1, h // 2 :, w // 2 :] = True
    assert torch.all(edited[~inside] == 0)
    assert edited[inside].mean() > 2 * plain[inside].mean()


def test_box_edit_applies_to_the_conditional_rows_only(backbone):
    latents, text = _inputs(backbone, batch=1, frames=2)
    token = backbone.phrase_positions("a red sks square", "sks")
    edit = BoxEdit([SubjectBox(token, torch.tensor([[0.0, 0.0, 0.5, 0.5]] * 2))], strength=5.0)
    uncond = backbone.encode_prompt([""])
    both_latents, both_text = torch.cat([latents, latents]), torch.cat([uncond, text])
    conditional = torch.tensor([False, True])
    site = cross_site(backbone)
    with backbone.controller.record(lambda s: s.name == site) as maps:
        backbone.predict_noise(both_latents, torch.tensor(300), both_text)
    plain = maps[site].clone()
    with backbone.controller.record(lambda s: s.name == site) as maps, backbone.controller.editing(edit):
        backbone.predict_noise(both_latents, torch.tensor(300), both_text, conditional)
    assert torch.allclose(maps[site][:1], plain[:1], atol=1e-6)
    assert not torch.allclose(maps[site][1:], plain[1:], atol=1e-3)


def test_zero_initialised_embeddings_are_an_identity(backbone):
    latents, text = _inputs(backbone)
    before = backbone.predict_noise(latents, torch.tensor(300), text)
    site = backbone.controller.sites[temporal_site(backbone)]
    h, w = backbone.grid_at_level((16, 16), site.level)
    channels = backbone.denoiser.get_submodule(temporal_site(backbone)).to_q.in_features
    backbone.controller.embeddings[temporal_site(backbone)] = TemporalEmbedding(channels, 8, value_grid=(h, w))
    after = backbone.predict_noise(latents, torch.tensor(300), text)
    assert torch.allclose(before, after, atol=1e-6)
    with torch.no_grad():
        backbone.controller.embeddings[temporal_site(backbone)].query_key.normal_()
    assert not torch.allclose(before, backbone.predict_noise(latents, torch.tensor(300), text), atol=1e-4)


def test_embeddings_enter_query_key_and_value_as_in_motion_inversion(backbone):
    """TA(x) = softmax(Wq(x + m_qk) (Wk(x + m_qk))^T / sqrt(d)) Wv(x + m_v), computed by hand."""
    by_hand(backbone)
    attn = backbone.denoiser.get_submodule(temporal_site(backbone))
    channels, frames, pixels = attn.to_q.in_features, 3, 4
    torch.manual_seed(0)
    embedding = TemporalEmbedding(channels, 5, value_grid=(2, 2))
    with torch.no_grad():
        embedding.query_key.normal_()
        embedding.value.normal_()
    backbone.controller.embeddings[temporal_site(backbone)] = embedding
    x = torch.randn(2 * pixels, frames, channels)
    out = attn(x)
    qk_input = x + embedding.query_key[:, :frames]
    v_input = x + embedding.value[:, :frames].repeat(2, 1, 1)
    q, k, v = (attn.head_to_batch_dim(t) for t in (attn.to_q(qk_input), attn.to_k(qk_input), attn.to_v(v_input)))
    probs = (q @ k.transpose(1, 2) * attn.scale).softmax(-1)
    expected = attn.to_out[0](attn.batch_to_head_dim(probs @ v))
    assert torch.allclose(out, expected, atol=1e-5)


def test_embeddings_interpolate_over_frames():
    embedding = TemporalEmbedding(2, 4)
    with torch.no_grad():
        embedding.query_key.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0])[None, :, None].expand(1, 4, 2))
    longer = embedding.query_key_for(7)
    assert longer.shape == (1, 7, 2)
    assert torch.allclose(longer[0, :, 0], torch.linspace(0, 3, 7))
    assert torch.equal(embedding.query_key_for(2), embedding.query_key[:, :2])


def test_zero_frame_positions_are_an_identity_and_trained_ones_change_the_output(backbone):
    latents, text = _inputs(backbone)
    before = backbone.predict_noise(latents, torch.tensor(300), text)
    backbone.add_frame_positions(8)
    temporal = {site.name for site in backbone.sites if site.kind == "temporal"}
    assert set(backbone.frame_positions) == temporal
    assert torch.allclose(before, backbone.predict_noise(latents, torch.tensor(300), text), atol=1e-6)
    with torch.no_grad():
        backbone.frame_positions[temporal_site(backbone)].normal_()
    assert not torch.allclose(before, backbone.predict_noise(latents, torch.tensor(300), text), atol=1e-4)


def test_frame_positions_add_to_a_motion_inversion_query_key(backbone):
    """x + p_f + m_qk feeds Wq and Wk: the base model's positions and an adapter's embedding sum."""
    by_hand(backbone)
    attn = backbone.denoiser.get_submodule(temporal_site(backbone))
    channels, frames = attn.to_q.in_features, 3
    torch.manual_seed(0)
    backbone.add_frame_positions(5)
    embedding = TemporalEmbedding(channels, 5)
    with torch.no_grad():
        backbone.frame_positions[temporal_site(backbone)].normal_()
        embedding.query_key.normal_()
    backbone.controller.embeddings[temporal_site(backbone)] = embedding
    x = torch.randn(4, frames, channels)
    out = attn(x)
    qk_input = x + backbone.frame_positions[temporal_site(backbone)][:, :frames] + embedding.query_key[:, :frames]
    q, k, v = (attn.head_to_batch_dim(t) for t in (attn.to_q(qk_input), attn.to_k(qk_input), attn.to_v(x)))
    probs = (q @ k.transpose(1, 2) * attn.scale).softmax(-1)
    expected = attn.to_out[0](attn.batch_to_head_dim(probs @ v))
    assert torch.allclose(out, expected, atol=1e-5)
