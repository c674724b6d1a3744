"""The Top-K compression hook: its settings, its state across process spawning, and what two gloo ranks receive."""

from __future__ import annotations

import pickle
import threading

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lit_microopt import ops
from lit_microopt.strategies import TopKCompression, TopKCompressionState, topk_compression_hook
from lit_microopt.strategies.compression import _ErrorFeedback
from tests.strategies.distributed import spawn


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"density": 0.0}, "density must be in (0, 1], got 0.0"),
        ({"block_size": 40000}, "block_size must be an integer in [1, 32768]"),
        ({"quant_bucket_size": 63}, "quant_bucket_size must be an even integer >= 2, got 63"),
        ({"ef_rounding": "up"}, "ef_rounding must be 'nearest' or 'stochastic', got 'up'"),
    ],
)
def test_out_of_range_settings_name_the_setting_and_range(settings, message):
    with pytest.raises(ValueError, match=f"TopKCompression: {message}".replace("(", r"\(").replace("[", r"\[")):
        TopKCompression(**settings)


def test_bytes_per_element_counts_indices_and_values():
    assert TopKCompression(density=0.01).bytes_per_element() == 82 * 4 / 8192  # ceil(81.92) entries of 4 bytes
    assert TopKCompression(density=0.01, block_size=100).bytes_per_element() == 0.04
    assert TopKCompression(density=0.01).ratio_to_dense(torch.float32) == 82 / 8192
    assert TopKCompression(density=1.0).ratio_to_dense(torch.bfloat16) == 2.0


def test_the_state_pickles_without_its_process_group():
    state = TopKCompressionState(TopKCompression(density=0.05), process_group=threading.Lock())  # unpicklable
    feedback = state.error_feedback[3] = _ErrorFeedback(("weight",), 100, 64, torch.device("cpu"))
    feedback.codes.fill_(7)
    state.iteration, state.bytes_sent, state.dense_bytes = 5, 40, 4000
    copied = pickle.loads(pickle.dumps(state))
    assert copied.process_group is None and copied.compression == state.compression
    assert torch.equal(copied.error_feedback[3].codes, feedback.codes)
    assert (copied.iteration, copied.compression_ratio, copied.error_feedback_bytes()) == (5, 0.01, 50 + 2 * 2 * 2)


def raw_gradient(rank: int, weight: torch.Tensor) -> torch.Tensor:
    """The gradient rank ``rank`` computes for the layer before any communication."""
    inputs = torch.randn(8, weight.shape[1], generator=torch.Generator().manual_seed(100 + rank))
    weight = weight.detach().clone().requires_grad_()
    (inputs @ weight.T).square().sum().backward()
    return weight.grad.view(-1)


def check_hook(rank: int, world_size: int, state: TopKCompressionState) -> None:
    compression = state.compression
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 64, bias=False)  # one parameter, one bucket of 16384 elements
    model = DistributedDataParallel(layer)
    model.register_comm_hook(state, topk_compression_hook)
    raw = [raw_gradient(r, layer.weight) for r in range(world_size)]
    inputs = torch.randn(8, 256, generator=torch.Generator().manual_seed(100 + rank))

    def step() -> torch.Tensor:
        layer.weight.grad = None
        model(inputs).square().sum().backward()
        return layer.weight.grad.view(-1).clone()

    # The first step is a dense average, while DDP settles its buckets.
    torch.testing.assert_close(step(), sum(raw) / world_size)
    assert state.bytes_sent == 0

    # Then the average of every rank's block Top-K (the error feedback is still empty): 21 entries per block.
    layout = compression.layout(16384)
    expected = torch.zeros(16384)
    kept = []
    for gradient in raw:
        blocks = gradient.view(-1, 1024)
        kept.append((blocks.abs().topk(layout.k_block, dim=1).indices + torch.arange(16)[:, None] * 1024).view(-1))
        expected[kept[-1]] += gradient[kept[-1]].bfloat16().float()
    received = step()
    assert torch.equal(received, expected / world_size)
    assert (state.bytes_sent, state.dense_bytes) == (4 * layout.k, 4 * 16384)
    # What was left out waits in this rank's error feedback, within half a quantization step per bucket.
    feedback = state.error_feedback[0]
    decoded = ops.dequantize(feedback.codes, feedback.bucket_min, feedback.bucket_max, 64, 0, 16384)
    remainder = raw[rank].clone()
    remainder[kept[rank]] -= remainder[kept[rank]].bfloat16().float()
    half_step = (feedback.bucket_max.float() - feedback.bucket_min.float()) / 15 / 2
    assert ((decoded - remainder).view(-1, 64).abs() <= half_step[:, None] * (1 + 1e-5)).all()
    assert (decoded - remainder).abs().max() < 0.1 * remainder.abs().max()

    # Later steps add the error feedback back; every rank still receives the same gradient.
    received = step()
    gathered = [torch.empty_like(received) for _ in range(world_size)]
    dist.all_gather(gathered, received)
    assert all(torch.equal(gathered[0], other) for other in gathered)
    assert state.bytes_sent == 2 * 4 * layout.k
    assert model._get_ddp_logging_data()["comm_hook"] == "topk_compression_hook"


def test_two_ranks_receive_the_average_of_their_top_k_and_keep_the_rest():
    # The state is made here and pickled into the spawned processes, as Lightning's ddp_spawn does.
    state = TopKCompressionState(TopKCompression(density=0.02, block_size=1024, quant_bucket_size=64))
    spawn(check_hook, 2, state)


def train_with_compression(rank: int, world_size: int, steps: int, resume_at: int | None, folder: str) -> None:
    """``steps`` SGD steps of a small net through DDP with the hook (small buckets: several of them), the state
    handed to a new DDP and a new state after ``resume_at`` steps, as a resumed process does; the weights are saved."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 48), torch.nn.Tanh(),
                              torch.nn.Linear(48, 8))
    compression = TopKCompression(density=0.05, block_size=256, ef_rounding="stochastic")

    def wrap(saved: dict | None) -> tuple[DistributedDataParallel, TopKCompressionState]:
        model = DistributedDataParallel(net, bucket_cap_mb=0.008)  # 2000 float32 elements a bucket
        state = TopKCompressionState(compression)
        state.name_parameters(net)
        if saved is not None:
            state.load_state_dict(saved)
        model.register_comm_hook(state, topk_compression_hook)
        return model, state

    model, state = wrap(None)
    generator = torch.Generator().manual_seed(rank)
    for step in range(steps):
        if step == resume_at:
            model, state = wrap(state.state_dict())
        net.zero_grad()
        model(torch.randn(16, 32, generator=generator)).square().mean().backward()
        with torch.no_grad():
            for param in net.parameters():
                param -= 0.1 * param.grad
    torch.save({"parameters": [param.detach() for param in net.parameters()],
                "units": {index: unit.parameters for index, unit in state.error_feedback.items()}},
               f"{folder}/rank{rank}.pt")


def test_a_new_ddp_given_the_state_takes_the_steps_of_the_old_one(tmp_path):
    # A new DDP starts with one bucket of every parameter, in parameter order, where the old one had rebuilt its
    # buckets in the order gradients came in: the hook compresses the saved units one by one.
    (tmp_path / "uninterrupted").mkdir(), (tmp_path / "resumed").mkdir()
    spawn(train_with_compression, 2, 6, None, str(tmp_path / "uninterrupted"))
    spawn(train_with_compression, 2, 6, 3, str(tmp_path / "resumed"))
    for rank in (0, 1):
        expected, found = (torch.load(tmp_path / run / f"rank{rank}.pt") for run in ("uninterrupted", "resumed"))
        assert len(expected["units"]) > 1 and expected["units"] == found["units"]
        for wanted, got in zip(expected["parameters"], found["parameters"]):
            assert torch.equal(wanted, got)


def test_a_state_of_other_settings_or_parameters_is_refused_and_nothing_is_loaded():
    net = torch.nn.Linear(4, 3)
    saved = TopKCompressionState(TopKCompression(density=0.05))
    saved.iteration = 7
    saved.error_feedback[0] = _ErrorFeedback(("weight", "bias"), 15, 64, torch.device("cpu"))
    state = TopKCompressionState(TopKCompression(density=0.1))
    state.name_parameters(net)
    with pytest.raises(ValueError, match=r"saved with TopKCompression\(density=0.05.*resume with the same model"):
        state.load_state_dict(saved.state_dict())
    assert state.iteration == 0 and not state.error_feedback
    state = TopKCompressionState(TopKCompression(density=0.05))
    state.name_parameters(torch.nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"the parameters \['weight', 'bias'\] hold 15 elements"):
        state.load_state_dict(saved.state_dict())
    state.name_parameters(torch.nn.Sequential(net))
    with pytest.raises(ValueError, match="parameter 'weight', which this model does not have"):
        state.load_state_dict(saved.state_dict())
    state.name_parameters(net)
    state.load_state_dict(saved.state_dict())
    assert state.iteration == 7 and state.error_feedback[0].parameters == ("weight", "bias")
