"""train/demo.py end to end on a small stand-in: the commands it prints are the ones it ran, its
report is written, and the next commands it prints work on its own files."""
import json
import shlex

import pytest
import torch

from conftest import call_script

pytestmark = pytest.mark.slow  # the demo: three runs, a report, an evaluation


def printed_commands(stdout: str) -> list[list[str]]:
    """Every command line the demo printed (after "$ " or indented), as (script, args...)."""
    commands = []
    for line in stdout.splitlines():
        line = line.split("$ ", 1)[-1].strip()
        if line.startswith("python ") or line.startswith(".venv/bin/python "):
            commands.append(shlex.split(line)[1:])
    return commands


def test_demo_runs_what_it_prints_and_its_next_steps_work(tmp_path, capsys):
    rc, out, err = call_script(capsys, "train/demo.py", "--epochs-freeze", "1", "--epochs-full", "1",
                               "--stand-in-images", "20")
    assert rc == 0, err
    report = tmp_path / "demo" / "report" / "report.md"
    assert f"{report.relative_to(tmp_path)} and {report.with_suffix('.html').relative_to(tmp_path)}" in out
    assert (tmp_path / "demo" / "report" / "confusion.png").is_file()
    freeze, full, report_cmd, *next_steps = printed_commands(out)
    assert freeze[:2] == ["train/finetune.py", "--freeze"] and "--lr" in freeze and report_cmd[0] == "train/report.py"
    assert [c[0] for c in next_steps] == ["train/finetune.py", "train/finetune.py", "train/report.py",
                                          "train/evaluate.py", "convert/pt_to_keras_pickle.py",
                                          "train/finetune.py", "convert/keras_pickle_to_pt.py"]

    # The printed freeze command, run again, gives the demo's own run exactly.
    before = json.loads((tmp_path / "demo" / "freeze" / "metrics.json").read_text())
    model = torch.load(tmp_path / "demo" / "freeze" / "model.pt", weights_only=True)
    rc, _, err = call_script(capsys, *freeze)
    assert rc == 0, err
    again = json.loads((tmp_path / "demo" / "freeze" / "metrics.json").read_text())
    assert again["test_accuracy"] == before["test_accuracy"] and again["config"] == before["config"]
    rerun = torch.load(tmp_path / "demo" / "freeze" / "model.pt", weights_only=True)
    assert model.keys() == rerun.keys() and all(torch.equal(v, rerun[k]) for k, v in model.items())

    # The next steps work on the demo's files as printed (one epoch each here, to keep it short).
    for command in next_steps[:2]:
        rc, _, err = call_script(capsys, *command, "--epochs", "1")
        assert rc == 0, (command, err)
    rc, _, err = call_script(capsys, *next_steps[2])
    assert rc == 0 and (tmp_path / "report" / "report.html").is_file(), err
    rc, _, err = call_script(capsys, *next_steps[3])  # evaluate the full run's model on the same data
    evaluated = json.loads((tmp_path / "runs/eval_full/eval.json").read_text())
    assert rc == 0 and evaluated["top1"] == json.loads((tmp_path / "runs/full/metrics.json").read_text())[
        "test_accuracy"], err
    rc, _, err = call_script(capsys, *next_steps[4])  # and back to Keras
    assert rc == 0 and (tmp_path / "model_keras.pkl").is_file(), err
    rc, _, err = call_script(capsys, *next_steps[5])  # the resume hint, on a finished run: refused, unchanged
    assert rc == 2 and "holds a finished run" in err
    metrics = json.loads((tmp_path / "runs" / "freeze" / "metrics.json").read_text())
    assert metrics["val_images"] == 2 and metrics["train_images"] == 18  # the default tenth held out
    assert metrics["learning_rates"]["head"] == 1e-3  # the trainer's default, as the README says
