"""benchmarks/methods_vs_naive.py: its naive and official references compute what the library computes."""

from __future__ import annotations

import contextlib

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor


@pytest.fixture
def backbone(unet3d_backbone):
    """The tiny UNet3D only: the naive references mirror the official UNet3D code."""
    return unet3d_backbone


@pytest.fixture
def bench(load_benchmark):
    """The benchmark script as a module (it imports its sibling engine_cpu)."""
    return load_benchmark("methods_vs_naive")


pytestmark = pytest.mark.usefixtures("single_thread")


def test_every_variant_gives_the_loss_gradients_and_latents_of_ours(bench, tiny_model_dir):
    differences = bench.check_equivalence(tiny_model_dir, frames=2, size=16, device="cpu")
    assert set(differences) == {(w, v) for w in bench.WORKLOADS for v in ("official", "naive")}
    for (workload, _), difference in differences.items():
        assert 0 <= difference <= bench.RELATIVE_TOLERANCE[workload]


def test_the_check_catches_a_reference_that_computes_something_else(bench, tiny_model_dir, monkeypatch):
    """MotionMatcher's official reference with its LoRA left on in the feature passes is another loss."""
    monkeypatch.setattr(bench, "lora_at_scale_zero", lambda method: contextlib.nullcontext())
    with pytest.raises(AssertionError, match="mm-train official loss: differs from ours by"):
        bench.check_equivalence(tiny_model_dir, frames=2, size=16, device="cpu", workloads=["mm-train"])


def test_explicit_attention_swaps_the_processor_of_the_selected_sites_only(bench, backbone, monkeypatch):
    """The naive path is a processor choice: the same output, diffusers' AttnProcessor only where selected."""
    case = bench.prepare_case("mi-sample", backbone, frames=2, size=16)
    calls = []
    original = AttnProcessor.__call__

    def counted(self, attn, *args, **kwargs):
        calls.append(attn)
        return original(self, attn, *args, **kwargs)

    monkeypatch.setattr(AttnProcessor, "__call__", counted)
    ours = bench.guided_step(case, "ours")
    assert calls == []
    official = bench.guided_step(case, "official")
    assert calls == []  # only the embedded temporal sites go explicit, through the controller's own path
    naive = bench.guided_step(case, "naive")
    plain_sites = [s for s in backbone.sites if s.name not in case.method.embeddings]
    assert len(calls) == 2 * len(plain_sites)  # two UNet calls (the CFG halves apart), every plain site
    torch.testing.assert_close(official, ours, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(naive, ours, rtol=1e-5, atol=1e-6)
    count = len(calls)
    bench.guided_step(case, "ours")
    assert len(calls) == count  # the explicit mode ends with its block


def test_assert_close_measures_against_the_largest_value(bench):
    ours = torch.tensor([1.0, -4.0], dtype=torch.float64)
    assert bench.assert_close(
        "same", ours, ours + torch.tensor([0.0, 4e-5], dtype=torch.float64), rtol=1e-4
    ) == pytest.approx(1e-5)
    with pytest.raises(AssertionError, match=r"wrong: differs from ours by 0.001 of its largest value"):
        bench.assert_close("wrong", ours, ours + torch.tensor([4e-3, 0.0]), rtol=1e-4)
    with pytest.raises(AssertionError, match=r"shape \(3,\) differs"):
        bench.assert_close("shape", ours, torch.zeros(3), rtol=1e-4)


def test_section_is_replaced_between_its_markers_and_other_sections_survive(bench, tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\n## Engine on CPU\n\nengine numbers\n")
    first = f"{bench.HEADING}\n{bench.BEGIN}\n\nold table\n\n{bench.END}\n"
    bench.write_section(path, first)
    path.write_text(path.read_text() + "\n## Later section\n\nkept\n")
    bench.write_section(path, first.replace("old table", "new table"))
    text = path.read_text()
    assert "new table" in text and "old table" not in text
    assert text.count(bench.BEGIN) == 1 and "engine numbers" in text and "kept" in text
    assert text.index("## Engine on CPU") < text.index(bench.HEADING) < text.index("## Later section")
