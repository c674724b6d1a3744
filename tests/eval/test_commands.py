"""The eval and export commands; one checkpoint scores the same through lit_microopt and, exported, stock lm-eval."""

import json
import os
import subprocess
import sys

import lm_eval
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_microopt.__main__ import main
from lit_microopt.eval import export_checkpoint, load_causal_lm
from lit_microopt.eval.tasks import build_task_manager
from tests.eval.conftest import TASKS

TASK_NAMES = ["lit_microopt_arithmetic", "lit_microopt_arithmetic_mc"]
LIMIT = 40
#: What lm-eval scores on each task: the metric key of its results.
METRICS = {"lit_microopt_arithmetic": "exact_match,none", "lit_microopt_arithmetic_mc": "acc,none"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def scores(results: dict) -> dict[str, float]:
    return {task: results["results"][task][metric] for task, metric in METRICS.items()}


def test_eval_prints_the_table_and_writes_the_results(checkpoint, tmp_path, capsys):
    output = tmp_path / "results.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--tasks", ",".join(TASK_NAMES), "--include_path",
                 str(TASKS), "--limit", "8", "--batch_size", "8", "--device", "cpu", "--output_path", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "|lit_microopt_arithmetic   |" in printed and "|exact_match|" in printed and "|acc" in printed
    results = json.loads(output.read_text())
    assert results["config"]["checkpoint"] == str(checkpoint.resolve())
    assert {task: results["n-samples"][task]["effective"] for task in TASK_NAMES} == dict.fromkeys(TASK_NAMES, 8)
    assert f"results written to {output}" in printed


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--tasks", "lit_microopt_arithmetc"], "unknown lm-eval task 'lit_microopt_arithmetc' (close names: "
                                                 "lit_microopt_arithmetic"),
        (["--tasks", "lit_microopt_arithmetic", "--checkpoint", "missing.ckpt"], "checkpoint 'missing.ckpt' is not a file"),
        (["--tasks", "lit_microopt_arithmetic", "--limit", "0"], "must be > 0"),
    ],
    ids=["unknown task", "missing checkpoint", "empty limit"],
)
def test_eval_mistakes_end_with_one_error_line(checkpoint, capsys, arguments, message):
    command = ["eval", "--checkpoint", str(checkpoint), "--include_path", str(TASKS), *arguments]
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    assert message in error


def test_a_checkpoint_of_another_module_is_named(tmp_path):
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(1)}, "hyper_parameters": {"num_labels": 3}}, other)
    with pytest.raises(ValueError, match="is not a checkpoint of lit_microopt's CausalLM"):
        load_causal_lm(other)


def test_export_writes_a_folder_hugging_face_loads_offline(checkpoint, tmp_path):
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "exported")]) == 0
    module = load_causal_lm(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "exported", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "exported", local_files_only=True)
    assert tokenizer.get_vocab() == module.tokenizer.get_vocab()
    assert tokenizer("What is 1+2?").input_ids == module.tokenizer("What is 1+2?").input_ids
    trained = module.model.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_export_keeps_what_a_folder_already_holds(checkpoint, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path)])
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    assert export_checkpoint(checkpoint, tmp_path, overwrite=True) == tmp_path
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "config.json").is_file()


@pytest.mark.slow
def test_a_checkpoint_scores_the_same_through_lit_microopt_and_exported_through_stock_hf(checkpoint, tmp_path):
    # Python route: lm-eval knows the model by name once lit_microopt is imported.
    ours = lm_eval.simple_evaluate(
        model="lit_microopt", model_args=f"checkpoint={checkpoint},device=cpu,batch_size=20", tasks=TASK_NAMES,
        task_manager=build_task_manager(TASK_NAMES, TASKS), limit=LIMIT,
    )
    export_checkpoint(checkpoint, tmp_path / "exported")
    # Stock lm-eval on the exported folder, from another directory, offline. (lm-eval 0.4.x's command line
    # takes the device from --device: device=cpu in model_args would clash with its default, cuda:0.)
    stock = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tmp_path / 'exported'}",
         "--device", "cpu", "--batch_size", "20", "--tasks", ",".join(TASK_NAMES), "--include_path", str(TASKS),
         "--limit", str(LIMIT), "--output_path", str(tmp_path / "stock")],
        cwd=tmp_path, env={**os.environ, **OFFLINE}, capture_output=True, text=True,
        timeout=600,
    )
    assert stock.returncode == 0, stock.stderr[-3000:]
    [results_file] = (tmp_path / "stock").glob("**/results_*.json")
    theirs = json.loads(results_file.read_text())
    assert scores(ours) == scores(theirs)
    assert 0.0 < scores(ours)["lit_microopt_arithmetic"] < 1.0  # a score that could have differed
    assert "|lit_microopt_arithmetic   |" in stock.stdout
