"""A run folder is a record: one writer at a time, never rewritten once finished, safe under
faults (a full disk, SIGTERM, a killed write), crafted files refused, printed commands that
work when pasted, and one test figure for one model from the trainer and from train/evaluate.py."""
import json
import os
import pickle
import resource
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, assert_refused, call_script, finetune_args, stop_in_epoch, train
from torch_resnet.data.cifar import CIFAR10
from torch_resnet.data.synthetic import write_cifar

FINETUNE = "train/finetune.py"


def snapshot(folder):
    """Every file of ``folder`` with its bytes: "changes no byte" made checkable."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(freeze_run, tmp_path):
    """A copy of the session's finished --freeze run."""
    out = tmp_path / "done"
    shutil.copytree(freeze_run[3], out)
    return out


@pytest.mark.slow
def test_two_runs_on_one_folder_one_writes_the_other_stops_at_once(setup, tmp_path):
    out = tmp_path / "shared"
    runs = [subprocess.Popen([sys.executable, str(ROOT / FINETUNE), *finetune_args(setup, out, "--freeze"),
                              "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for seed in (0, 1)]
    results = [(r.wait(timeout=600), r.stderr.read()) for r in runs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    loser = next(err for rc, err in results if rc == 2).strip()
    assert len(loser.splitlines()) == 1 and str(out) in loser, loser
    assert "in use by another run" in loser or "already holds a run" in loser, loser  # the other one finished first
    winner = [0, 1][[rc for rc, _ in results].index(0)]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    metrics = json.loads((out / "metrics.json").read_text())
    model = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["config"]["seed"] == metrics["config"]["seed"] == winner  # one run's record, not two mixed
    assert all(torch.equal(model[k], ckpt["model"][k]) for k in model)


def test_resume_of_a_finished_run_changes_no_byte(setup, finished, capsys):
    before = snapshot(finished)
    rc, _, err = call_script(capsys, FINETUNE, "--resume", "--out", finished)
    assert_refused(rc, err, f"{finished} holds a finished run", "changed nothing")
    assert snapshot(finished) == before


def test_report_and_evaluate_never_write_into_a_run_folder(setup, finished, freeze_run, capsys):
    before = snapshot(finished)
    rc, _, err = call_script(capsys, "train/report.py", finished, "-o", finished)
    assert_refused(rc, err, f"--out {finished} is a fine-tuning run's folder")
    rc, _, err = call_script(capsys, "train/evaluate.py", "--weights", finished / "model.pt", "--out", finished,
                             "--data-dir", setup[0] / "data", "--device", "cpu", "--no-download")
    assert_refused(rc, err, f"--out {finished} is a fine-tuning run's folder")
    assert snapshot(finished) == before


def limited_file_size(limit):
    """In the child: files larger than ``limit`` bytes cannot be written (EFBIG, as a quota or a
    full disk would refuse); Python ignores SIGXFSZ, so the write itself fails."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_earlier_files_stay(setup, finished, tmp_path):
    before = snapshot(finished)
    args = [sys.executable, str(ROOT / FINETUNE), *finetune_args(setup, finished, "--freeze", "--overwrite")]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, preexec_fn=limited_file_size(2**20))
    assert_refused(r.returncode, r.stderr, f"cannot write {finished / 'checkpoint.pt'}: File too large")
    assert snapshot(finished) == before  # the earlier run is whole; no temporary file left
    pkl = tmp_path / "w.pkl"  # the converter: a 17 MB state dict does not fit either
    from torch_resnet.conversion.convert import state_dict_to_keras
    pkl.write_bytes(pickle.dumps(state_dict_to_keras(torch.load(setup[1], weights_only=True)), protocol=4))
    out = tmp_path / "conv"
    out.mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "convert/keras_pickle_to_pt.py"), str(pkl), "-o",
                        str(out / "w.pt")], capture_output=True, text=True, timeout=300,
                       preexec_fn=limited_file_size(2**20))
    assert_refused(r.returncode, r.stderr, f"cannot write {out / 'w.pt'}", nothing_in=out)


# Runs train/finetune.py and sends it SIGTERM in the middle of writing its second checkpoint.
TERM_IN_SECOND_CHECKPOINT = """
import os, runpy, signal, sys, torch
from torch_resnet.formats import files
real_save, calls = torch.save, []
def save_then_term(obj, f, *a, **k):
    real_save(obj, f, *a, **k)
    calls.append(1)
    if len(calls) == 2:  # the second checkpoint, written but not yet renamed into place
        os.kill(os.getpid(), signal.SIGTERM)
torch.save = save_then_term
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_sigterm_is_ctrl_c_and_stale_temporary_files_go(setup, freeze_run, tmp_path, capsys):
    out = tmp_path / "termed"
    args = finetune_args(setup, out, "--freeze", "--step-memory")  # the options of the session's freeze_run
    r = subprocess.run([sys.executable, "-c", TERM_IN_SECOND_CHECKPOINT, str(ROOT / FINETUNE), *args],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 143, r.stderr[-2000:]
    err = r.stderr.strip()
    assert err.splitlines() == [f"error: terminated (SIGTERM); {out / 'checkpoint.pt'} keeps the run up to its last "
                                f"finished epoch; continue it with: python {FINETUNE} --resume --out {out}"], err
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoint.pt"]  # the interrupted write left nothing
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 0
    stale = out / ".checkpoint.pt.k1ll3d00.tmp"  # as a SIGKILL in mid-write leaves it
    stale.write_bytes(b"x" * 1000)
    rc, _, err = call_script(capsys, FINETUNE, "--resume", "--out", out)
    assert rc == 0, err
    assert not stale.exists()
    resumed, straight = torch.load(out / "model.pt", weights_only=True), freeze_run[2]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["my run", "-x"])
def test_printed_resume_command_works_when_pasted(setup, tmp_path, capsys, monkeypatch, folder):
    monkeypatch.chdir(tmp_path)
    stop_in_epoch(monkeypatch, 1)
    args = finetune_args(setup, "OUT", "--freeze")
    args[args.index("--out"):args.index("--out") + 2] = [f"--out={folder}"]
    rc, _, err = call_script(capsys, FINETUNE, *args)
    assert rc == 130, err
    command = err.split("continue it with: ")[1].strip()
    words = shlex.split(command)
    assert words[:2] == ["python", FINETUNE] and words[2:] == ["--resume", f"--out={folder}" if folder == "-x"
                                                               else "--out", *([] if folder == "-x" else [folder])]
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    rc, out, err = call_script(capsys, FINETUNE, *words[2:])
    assert rc == 0 and "resuming" in out, err


def damaged_checkpoint(finished, change):
    (finished / "metrics.json").unlink()  # stopped before the end: resumable
    ckpt = torch.load(finished / "checkpoint.pt", weights_only=True)
    change(ckpt)
    torch.save(ckpt, finished / "checkpoint.pt")


@pytest.mark.parametrize("change, needle", [
    (lambda c: c["config"].update(epochs="abc"), "--epochs must be a whole number, got 'abc'"),
    (lambda c: c.update(history="abc"), "its 'history' is str, expected list"),
    (lambda c: c["history"][0].update(seconds=float("nan")), "history: 'epochs' must be a list of rows"),
    (lambda c: c.update(epoch=7), "epoch 7 and 2 history rows do not fit a run of 2 epochs"),
])
def test_crafted_checkpoint_is_refused_before_anything_is_written(setup, finished, capsys, change, needle):
    damaged_checkpoint(finished, change)
    before = snapshot(finished)
    rc, _, err = call_script(capsys, FINETUNE, "--resume", "--out", finished)
    assert_refused(rc, err, "is not a readable checkpoint", needle)
    assert snapshot(finished) == before


@pytest.mark.parametrize("change, needle", [
    (lambda m: m.update(trainable_parameters=10**400), "'trainable_parameters' is out of range"),
    (lambda m: m.update(test_confusion=[[10**30] * 10] * 10), "'test_confusion' must be 10 x 10 counts"),
    (lambda m: m.update(class_names=["cat"] * 10), "names a class twice ('cat')"),
])
def test_crafted_metrics_are_one_line(finished, tmp_path, capsys, change, needle):
    m = json.loads((finished / "metrics.json").read_text())
    change(m)
    (finished / "metrics.json").write_text(json.dumps(m))
    rc, _, err = call_script(capsys, "train/report.py", finished, "-o", tmp_path / "rep")
    assert_refused(rc, err, needle, nothing_in=tmp_path / "rep")
    (finished / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)  # nesting past the parser's recursion
    rc, _, err = call_script(capsys, "train/report.py", finished, "-o", tmp_path / "rep")
    assert_refused(rc, err, "not valid JSON", nothing_in=tmp_path / "rep")


def test_duplicate_class_names_are_refused(setup, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(setup[0] / "data", data)
    meta = data / CIFAR10.folder / CIFAR10.meta_file
    names = pickle.loads(meta.read_bytes())
    names[CIFAR10.names_key] = [b"cat"] * 10
    meta.write_bytes(pickle.dumps(names))
    args = finetune_args(setup, tmp_path / "o", "--freeze")
    args[args.index("--data-dir") + 1] = str(data)
    rc, _, err = call_script(capsys, FINETUNE, *args)
    assert_refused(rc, err, "names the class 'cat' twice", nothing_in=tmp_path / "o")


@pytest.mark.slow
def test_one_test_figure_from_the_trainer_and_from_evaluate(setup, tmp_path, capsys):
    # trained (frozen backbone, features cached once) and validated in bf16 (emulated on most CPUs:
    # few images); tested in fp32
    write_cifar(tmp_path / "data", CIFAR10, train_size=16, test_size=16, seed=6)
    metrics, _, _ = train(setup, tmp_path / "bf16", data_dir=tmp_path / "data", freeze=True, augment=False,
                          amp="bf16", epochs=1, batch_size=8, val_size=4)
    assert metrics["precision"] == {"train": "bfloat16", "validation": "bfloat16", "test": "float32"}
    rc, _, err = call_script(capsys, "train/evaluate.py", "--weights", tmp_path / "bf16" / "model.pt", "--data-dir",
                             tmp_path / "data", "--device", "cpu", "--no-download", "--batch-size", 8,
                             "--out", tmp_path / "ev")
    assert rc == 0, err
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["top1"] == metrics["test_accuracy"] and ev["top5"] == metrics["test_top5"]
    assert abs(ev["loss"] - metrics["test_loss"]) < 1e-9
    assert ev["per_class"] == metrics["test_per_class"]
