"""benchmarks/state_memory_at_scale.py reproduces the papers' state sizes for Llama-2, allocating nothing."""

from __future__ import annotations

import pytest
import torch

from tests.benchmarks.helpers import load_benchmark

scale = load_benchmark("state_memory_at_scale")
LAYOUTS = {layout.label: layout for layout in scale.STATE_LAYOUTS}
GIB = 2**30


def test_llama2_parameter_counts_include_the_embeddings_and_the_output_layer():
    assert sum(p.numel() for p in scale.meta_llama2("7B", torch.bfloat16).parameters()) == 6_738_415_616
    assert sum(p.numel() for p in scale.meta_llama2("13B", torch.bfloat16).parameters()) == 13_015_864_320


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("AdamW, bf16 states", 25.10),
        ("MicroAdam m=10, q=100000", 5.65),
    ],
)
def test_microadam_paper_figures_in_gib(label, expected):
    found = scale.measure_state("7B", LAYOUTS[label])
    assert round(found.state_bytes / GIB, 2) == expected


def test_adam_mini_paper_figure_in_gb():
    found = scale.measure_state("7B", LAYOUTS["Adam-mini, fp32 states"])
    assert round(found.state_bytes / 1e9, 2) == 26.96
    assert found.bytes_per_parameter == pytest.approx(4.0, abs=1e-3)  # m in fp32, plus one v per block


def test_8bit_adamw_codes_match_the_paper_and_scales_add_a_sixty_fourth():
    found = scale.measure_state("7B", LAYOUTS["8-bit AdamW (bitsandbytes)"])
    assert round(found.code_bytes / GIB, 2) == 12.55  # one byte per moment and parameter
    # One float32 scale per 256 codes: 2 * (1 + 4/256) bytes per parameter, plus the code maps.
    assert found.bytes_per_parameter == pytest.approx(2 * (1 + 4 / 256), rel=1e-4)
    assert round(found.state_bytes / GIB, 2) == 12.75


def test_the_state_is_sized_without_being_allocated():
    model = scale.meta_llama2("13B", torch.bfloat16)
    optimizer = LAYOUTS["MicroAdam m=20, q=100000"].build(model)
    scale.initialize_state(optimizer)
    tensors = [value for state in optimizer.state.values() for value in state.values()]
    assert len(optimizer.state) == len(list(model.parameters()))
    # Only the per-parameter step counts and rounding seeds (int64 scalars) are real, on the CPU.
    assert {t.device.type for t in tensors if t.numel() > 1} == {"meta"}
    assert all(t.numel() == 1 for t in tensors if t.device.type != "meta")


def test_the_table_names_every_optimizer_and_the_published_figures(capsys):
    scale.main(["--models", "7B"])
    table = capsys.readouterr().out
    assert "6,738,415,616 parameters" in table
    for label in LAYOUTS:
        assert f"| {label} |" in table
    assert "| 5.65 | 6.07 |" in table  # MicroAdam m=10, q=100000
    assert "26.96 GB (Adam-mini paper)" in table


def test_an_unknown_size_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown Llama-2 size '70B'; choose one of 7B, 13B"):
        scale.meta_llama2("70B", torch.bfloat16)
