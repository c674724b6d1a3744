"""Adam-mini's partition: every parameter's role and block count on the model families docs/adam_mini.md names."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from lit_microopt.optim.adam_mini import AdamMini
from lit_microopt.optim.partition import HeadConfig, partition_parameter, summarize_partition

transformers = pytest.importorskip("transformers")


def roles(optimizer: AdamMini) -> dict[str, tuple[str, int]]:
    return {name: (layout.role, layout.n_blocks) for name, layout in optimizer.partition.items()}


def test_llama_with_grouped_query_attention():
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    )
    optimizer = AdamMini.from_model(transformers.LlamaForCausalLM(config))
    assert roles(optimizer) == {
        "model.embed_tokens.weight": ("row", 96),
        "model.layers.0.self_attn.q_proj.weight": ("head", 4),
        "model.layers.0.self_attn.k_proj.weight": ("head", 2),  # n_kv_heads blocks of head_dim rows
        "model.layers.0.self_attn.v_proj.weight": ("row", 32),
        "model.layers.0.self_attn.o_proj.weight": ("row", 64),
        "model.layers.0.mlp.gate_proj.weight": ("row", 96),
        "model.layers.0.mlp.up_proj.weight": ("row", 96),
        "model.layers.0.mlp.down_proj.weight": ("row", 64),
        "model.layers.0.input_layernorm.weight": ("tensor", 1),
        "model.layers.0.post_attention_layernorm.weight": ("tensor", 1),
        "model.norm.weight": ("tensor", 1),
        "lm_head.weight": ("row", 96),
    }
    assert optimizer.heads == HeadConfig(n_heads=4, n_kv_heads=2, head_dim=16)


def test_gpt2_fused_c_attn_in_conv1d_orientation_and_tied_head():
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=4)
    model = transformers.GPT2LMHeadModel(config)
    optimizer = AdamMini.from_model(model)
    # Conv1D stores [in, out]: c_attn is [32, 96], its 96 output columns are [q; k; v]:
    # q 4 heads of 8 columns + k 4 heads + v 32 single columns = 40 blocks.
    assert roles(optimizer) == {
        "transformer.wte.weight": ("row", 50),
        "transformer.wpe.weight": ("row", 16),
        "transformer.h.0.ln_1.weight": ("tensor", 1),
        "transformer.h.0.ln_1.bias": ("element", 32),
        "transformer.h.0.attn.c_attn.weight": ("head", 4 + 4 + 32),
        "transformer.h.0.attn.c_attn.bias": ("element", 96),
        "transformer.h.0.attn.c_proj.weight": ("row", 32),
        "transformer.h.0.attn.c_proj.bias": ("element", 32),
        "transformer.h.0.ln_2.weight": ("tensor", 1),
        "transformer.h.0.ln_2.bias": ("element", 32),
        "transformer.h.0.mlp.c_fc.weight": ("row", 128),  # [32, 128]: one block per output column
        "transformer.h.0.mlp.c_fc.bias": ("element", 128),
        "transformer.h.0.mlp.c_proj.weight": ("row", 32),  # [128, 32]
        "transformer.h.0.mlp.c_proj.bias": ("element", 32),
        "transformer.ln_f.weight": ("tensor", 1),
        "transformer.ln_f.bias": ("element", 32),
    }  # lm_head.weight is tied to wte: optimised once, under the first name
    assert all(optimizer.partition[name].block_axis == 1 for name in optimizer.partition if name.endswith("c_fc.weight"))
    assert optimizer.partition["transformer.h.0.attn.c_attn.weight"].segment_rows == (32, 32, 32)
    assert optimizer.partition["transformer.h.0.attn.c_attn.weight"].rows_per_block == (8, 8, 1)


def test_bert_layer_norms_named_output_or_embeddings_are_tensors():
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=16,
    )
    optimizer = AdamMini.from_model(transformers.BertModel(config))
    layer = "encoder.layer.0."
    expected = {
        "embeddings.word_embeddings.weight": ("row", 50),
        "embeddings.position_embeddings.weight": ("row", 16),
        "embeddings.token_type_embeddings.weight": ("row", 2),
        "embeddings.LayerNorm.weight": ("tensor", 1),
        "embeddings.LayerNorm.bias": ("element", 32),
        layer + "attention.self.query.weight": ("head", 4),
        layer + "attention.self.key.weight": ("head", 4),
        layer + "attention.self.value.weight": ("row", 32),
        layer + "attention.output.dense.weight": ("row", 32),
        layer + "attention.output.LayerNorm.weight": ("tensor", 1),
        layer + "intermediate.dense.weight": ("row", 64),
        layer + "output.dense.weight": ("row", 32),
        layer + "output.LayerNorm.weight": ("tensor", 1),
        "pooler.dense.weight": ("row", 32),
    }
    found = roles(optimizer)
    for name, role in expected.items():
        assert found[name] == role, name
    biases = {name: role for name, role in found.items() if name.endswith(".bias")}
    assert len(biases) == 10 and all(role == "element" for role, _ in biases.values())
    assert set(found) == set(expected) | set(biases)  # every parameter is accounted for


def test_torch_transformer_encoder_layer_in_proj_weight():
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64)
    optimizer = AdamMini.from_model(layer)  # no config: the MultiheadAttention module gives its head count
    assert roles(optimizer) == {
        "self_attn.in_proj_weight": ("head", 4 + 4 + 32),
        "self_attn.in_proj_bias": ("element", 96),
        "self_attn.out_proj.weight": ("row", 32),
        "self_attn.out_proj.bias": ("element", 32),
        "linear1.weight": ("row", 64),
        "linear1.bias": ("element", 64),
        "linear2.weight": ("row", 32),
        "linear2.bias": ("element", 32),
        "norm1.weight": ("tensor", 1),
        "norm1.bias": ("element", 32),
        "norm2.weight": ("tensor", 1),
        "norm2.bias": ("element", 32),
    }


class TinyViT(nn.Module):
    """Patch embedding by a 4-D convolution, 3-D position embedding and class token, one encoder layer."""

    def __init__(self, dim: int = 32, patch: int = 4, image: int = 16) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(nn.TransformerEncoderLayer(dim, 4, 64, batch_first=True))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def test_vit_style_model_trains_with_conv_and_3d_embeddings():
    model = TinyViT()
    optimizer = AdamMini.from_model(model, lr=1e-3)
    found = roles(optimizer)
    assert found["patch_embed.weight"] == ("row", 32)  # [32, 3, 4, 4]: one block per output channel
    assert found["patch_embed.bias"] == ("element", 32)
    assert found["pos_embed"] == ("row", 1)  # p.view(p.shape[0], -1) with shape[0] == 1
    assert found["cls_token"] == ("row", 1)
    assert found["blocks.0.self_attn.in_proj_weight"] == ("head", 4 + 4 + 32)
    assert found["norm.weight"] == ("tensor", 1)
    assert found["head.weight"] == ("row", 10)
    model(torch.randn(2, 3, 16, 16)).square().mean().backward()
    optimizer.step()
    assert all(optimizer.state[p]["exp_avg_sq"].numel() == optimizer.partition[n].n_blocks
               for n, p in model.named_parameters())


def test_names_that_fool_substring_matching():
    model = nn.ModuleDict({
        "monkey": nn.Linear(8, 6),
        "network": nn.Sequential(nn.Linear(8, 5)),
        "keyboard": nn.Linear(8, 4),
        "query_norm": nn.LayerNorm(8),
        "attn": nn.ModuleDict({"q": nn.Linear(8, 8, bias=False), "k": nn.Linear(8, 4, bias=False)}),
    })
    optimizer = AdamMini(model.named_parameters(), n_heads=4, n_kv_heads=2)
    assert roles(optimizer) == {
        "monkey.weight": ("row", 6),
        "monkey.bias": ("element", 6),
        "network.0.weight": ("row", 5),
        "network.0.bias": ("element", 5),
        "keyboard.weight": ("row", 4),
        "keyboard.bias": ("element", 4),
        "query_norm.weight": ("tensor", 1),
        "query_norm.bias": ("element", 8),
        "attn.q.weight": ("head", 4),  # whole-token "q" (T5 style)
        "attn.k.weight": ("head", 2),
    }


def test_rules_are_tried_first_in_order():
    model = nn.ModuleDict({"q_proj": nn.Linear(8, 8), "norm": nn.LayerNorm(8), "out": nn.Linear(8, 3)})
    rules = [("q_proj.weight", "row"), ("norm.*", "element"), ("*.weight", "tensor"), ("out.weight", "row")]
    optimizer = AdamMini(model.named_parameters(), rules=rules)  # no n_heads needed: the rule decides q_proj
    assert roles(optimizer) == {
        "q_proj.weight": ("row", 8),
        "q_proj.bias": ("element", 8),
        "norm.weight": ("element", 8),
        "norm.bias": ("element", 8),
        "out.weight": ("tensor", 1),  # the earlier "*.weight" rule wins
        "out.bias": ("element", 3),
    }
    assert optimizer.partition["out.weight"].reason == "rule '*.weight'"


def test_head_rule_on_a_key_weight_uses_kv_heads():
    layout = partition_parameter("blk.attn.wk.weight", (16, 32), heads=HeadConfig(8, 2), rules=[("*.wk.*", "head")])
    assert (layout.role, layout.n_blocks) == ("head", 2)
    layout = partition_parameter("blk.attn.custom.weight", (64, 32), heads=HeadConfig(8, 2, 4), rules=[("*", "head")])
    assert (layout.role, layout.n_blocks) == ("head", 16)


def test_weight_decay_only_for_head_and_row():
    model = nn.ModuleDict({"q_proj": nn.Linear(8, 8), "norm": nn.LayerNorm(8)})
    optimizer = AdamMini(model.named_parameters(), n_heads=2)
    assert {name: layout.weight_decay for name, layout in optimizer.partition.items()} == {
        "q_proj.weight": True, "q_proj.bias": False, "norm.weight": False, "norm.bias": False,
    }


def test_tied_weights_appear_once_under_the_first_name():
    model = nn.ModuleDict({"embed": nn.Embedding(10, 4), "lm_head": nn.Linear(4, 10, bias=False)})
    model["lm_head"].weight = model["embed"].weight
    optimizer = AdamMini(list(model.named_parameters(remove_duplicate=False)))
    assert list(optimizer.partition) == ["embed.weight"]
    assert len(optimizer.param_groups[0]["params"]) == 1


def test_zero_dim_and_zero_size_parameters():
    scale = nn.Parameter(torch.tensor(1.5))
    empty = nn.Parameter(torch.zeros(0, 4))
    optimizer = AdamMini([("logit_scale", scale), ("empty", empty)])
    assert roles(optimizer) == {"logit_scale": ("tensor", 1), "empty": ("row", 0)}
    scale.grad, empty.grad = torch.tensor(0.5), torch.zeros(0, 4)
    optimizer.step()
    assert scale.item() != 1.5


def test_partition_is_logged_once_at_info(caplog):
    model = nn.ModuleDict({"proj": nn.Linear(8, 8), "norm": nn.LayerNorm(8), "gate": nn.Linear(8, 1, bias=False)})
    model.register_parameter("alpha", nn.Parameter(torch.ones(1)))
    with caplog.at_level(logging.INFO, logger="lit_microopt.optim.adam_mini"):
        optimizer = AdamMini(model.named_parameters())
        model["proj"](torch.randn(2, 8)).sum().backward()
        optimizer.step()
        optimizer.step()
    records = [record for record in caplog.records if record.name == "lit_microopt.optim.adam_mini"]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    message = records[0].getMessage()
    assert "row 2 (9 blocks)" in message and "tensor 2 (2 blocks)" in message and "element 2 (16 blocks)" in message
    assert "norm.weight" in message and "alpha" in message  # the parameters that fell into tensor by default
    assert message == summarize_partition(optimizer.partition)


# -- errors that name the fix --------------------------------------------------------------------------


def attention(q_rows: int = 64, k_rows: int = 32) -> nn.Module:
    return nn.ModuleDict({"q_proj": nn.Linear(64, q_rows, bias=False), "k_proj": nn.Linear(64, k_rows, bias=False)})


def test_n_heads_not_a_multiple_of_n_kv_heads():
    with pytest.raises(ValueError, match=r"n_heads \(8\) must be a multiple of n_kv_heads \(3\)"):
        AdamMini(attention().named_parameters(), n_heads=8, n_kv_heads=3)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(n_heads=6), r"q_proj.weight has 64 output rows, which do not split into n_heads=6 heads.*check n_heads"),
        (dict(n_heads=8, n_kv_heads=8, head_dim=12), r"do not split into heads of head_dim=12 rows"),
        (dict(), r"q_proj.weight is an attention query weight but the number of heads is unknown; pass n_heads"),
    ],
)
def test_head_sizes_that_do_not_divide(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        AdamMini(attention().named_parameters(), **kwargs)


def test_conv1d_weight_without_from_model_names_the_fix():
    model = transformers.GPT2Model(transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=4))
    with pytest.raises(ValueError, match=r"c_attn.weight.*AdamMini.from_model\(model\)"):
        AdamMini(model.named_parameters(), n_heads=4)  # [32, 96] read as [out, in]: 32 rows cannot hold q, k, v


def test_unnamed_parameters():
    model = nn.Linear(4, 4)
    for params in (model.parameters(), [{"params": list(model.parameters())}]):
        with pytest.raises(ValueError, match=r"named_parameters\(\).*param_names.*from_model"):
            AdamMini(params)


def test_groups_with_param_names_are_accepted():
    model = nn.Linear(4, 4)
    optimizer = AdamMini([{"params": [model.weight], "param_names": ["w"]},
                          {"params": [("b", model.bias)], "lr": 0.1}])
    assert list(optimizer.partition) == ["w", "b"]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(lr=-1.0), r"lr must be >= 0"),
        (dict(betas=(1.0, 0.999)), r"betas\[0\] must be in \[0, 1\)"),
        (dict(betas=(0.9, -0.1)), r"betas\[1\] must be in \[0, 1\)"),
        (dict(eps=-1e-8), r"eps must be >= 0"),
        (dict(weight_decay=-0.1), r"weight_decay must be >= 0"),
        (dict(n_heads=0), r"n_heads must be a positive integer"),
        (dict(n_kv_heads=2), r"n_kv_heads was given without n_heads"),
        (dict(head_dim=2.5), r"head_dim must be a positive integer"),
        (dict(state_dtype=torch.int8), r"state_dtype must be None, torch.float32"),
        (dict(rules=[("*", "rows")]), r"role of rule .* must be one of"),
        (dict(rules=["*"]), r"\(glob pattern, role\) pair"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        AdamMini(nn.Linear(4, 4).named_parameters(), **kwargs)


def test_bad_hyperparameter_in_a_param_group_names_the_group():
    model = nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"lr in param group 1 must be >= 0"):
        AdamMini([{"params": [("w", model.weight)]}, {"params": [("b", model.bias)], "lr": -1}])


def test_flattened_shards_are_refused():
    flat = nn.Parameter(torch.zeros(16))
    flat.ds_id = 0  # how DeepSpeed ZeRO marks its partitioned parameters
    with pytest.raises(ValueError, match=r"flat is a flattened shard.*DDP"):
        AdamMini([("flat", flat)])
