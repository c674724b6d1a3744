"""benchmarks/optimizer_step.py: the sizes table and the op-call counts, on the smallest size."""

from __future__ import annotations

import torch

from tests.benchmarks.helpers import load_benchmark

optimizer_step = load_benchmark("optimizer_step")


def test_the_sizes_have_the_parameter_and_tensor_counts_of_their_labels():
    for label, (hidden, layers) in optimizer_step.SIZES.items():
        params = list(optimizer_step.llama_model(hidden, layers).parameters())
        millions = sum(p.numel() for p in params) / 1e6
        assert abs(millions / float(label.removesuffix("M")) - 1) < 0.05, (label, millions)
        assert len(params) == 2 + 9 * layers + 1  # embeddings, 9 per layer, the final norm and the output layer


def test_op_calls_are_counted_by_namespace():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    params = list(model.parameters())

    def set_gradients():
        for param in params:
            param.grad = torch.ones_like(param)

    own, every, launches = optimizer_step.count_calls(torch.optim.AdamW(params, foreach=True), set_gradients)
    assert own == 0 and every > 0 and launches is None
    microadam = optimizer_step.OPTIMIZERS[1][1](model)
    own, every, _ = optimizer_step.count_calls(microadam, set_gradients)
    assert 0 < own < every
    assert microadam.state[params[0]]["step"] == 1  # the counted step is a real one


def test_one_table_of_ratios_and_one_of_calls(capsys):
    optimizer_step.main(["--sizes", "0.6M", "--warmup", "0", "--steps", "1", "--only", "MicroAdam"])
    lines = capsys.readouterr().out.splitlines()
    ratios = lines.index(next(line for line in lines if line.startswith("| ratio to AdamW")))
    assert lines[ratios + 2].startswith("| AdamW (foreach) | 1.00x |")
    assert [line.split(" | ")[0] for line in lines[ratios + 3 : ratios + 5]] == ["| MicroAdam", "| MicroAdam, reference"]
    calls = lines.index(next(line for line in lines if line.startswith("| calls per step")))
    rows = {line.split(" | ")[0]: line.split(" | ")[1] for line in lines[calls + 2 : calls + 5]}
    assert rows["| AdamW (foreach)"].startswith("0 / ")
    assert not rows["| MicroAdam"].startswith("0 / ")
    assert rows["| MicroAdam, reference"].startswith("0 / ")  # the reference runs without the dispatcher
