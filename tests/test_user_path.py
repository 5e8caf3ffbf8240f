"""The stumbles between the README's sections: the validation split, resuming a run and
stopping one, mixed-up files, a failed download, --help, honest images per second."""
import argparse
import json
import pickle
import re
import runpy
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, assert_refused, call_script, left_in, stop_in_epoch
from torch_resnet import ResidualNetwork
from torch_resnet.training import train as trainer
from torch_resnet.training.config import TrainConfig
from torch_resnet.data.cifar import CIFAR10, find_or_download
from torch_resnet.errors import UserError
from torch_resnet.cli.shell import cli
from torch_resnet.cli.shell import SCRIPTS as SCRIPT_COMMANDS
from torch_resnet.data.synthetic import write_cifar

FINETUNE = "train/finetune.py"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Weights (PyTorch init, 100 classes) and 60 + 20 CIFAR-10-format images."""
    root = tmp_path_factory.mktemp("path")
    torch.manual_seed(0)
    torch.save(ResidualNetwork(100).state_dict(), root / "weights.pt")
    write_cifar(root / "data", CIFAR10, train_size=60, test_size=20, seed=4)
    return root


def base_args(small, out):
    return ["--weights", small / "weights.pt", "--data-dir", small / "data", "--out", out, "--epochs", "2",
            "--batch-size", "20", "--device", "cpu", "--no-download"]


@pytest.mark.slow
def test_validation_is_a_tenth_by_default_and_a_count_still_works(small, tmp_path, capsys):
    rc, out, err = call_script(capsys, FINETUNE, "--freeze", *base_args(small, tmp_path / "a"), "--epochs", "1")
    assert rc == 0, err
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert (m["train_images"], m["val_images"]) == (54, 6) and "54 train / 6 val / 20 test" in out
    assert TrainConfig(val_size=5000).val_count(50_000) == 5000 and TrainConfig().val_count(50_000) == 5000
    for bad, needle in (("1.5", "--val-size must be a fraction below 1"), ("60", "a fraction such as 0.1"),
                        ("-0.1", "--val-size must be a fraction below 1")):
        rc, _, err = call_script(capsys, FINETUNE, "--freeze", *base_args(small, tmp_path / "b"), "--val-size", bad)
        assert_refused(rc, err, needle, nothing_in=tmp_path / "b")


@pytest.mark.slow
def test_ctrl_c_says_how_to_continue_and_resume_needs_only_the_folder(small, tmp_path, capsys, monkeypatch):
    def args(out):
        return ["--freeze", *base_args(small, out), "--lr", "3e-3", "--val-size", "20", "--seed", "7"]

    stop_in_epoch(monkeypatch, 0)
    rc, _, err = call_script(capsys, FINETUNE, *args(tmp_path / "early"))
    assert rc == 130 and err.strip() == "error: interrupted; no epoch had finished, nothing was saved", err
    stop_in_epoch(monkeypatch, 1)
    rc, _, err = call_script(capsys, FINETUNE, *args(tmp_path / "stopped"))
    assert rc == 130 and len(err.strip().splitlines()) == 1, err
    assert f"continue it with: python train/finetune.py --resume --out {tmp_path / 'stopped'}" in err
    monkeypatch.undo()
    rc, _, err = call_script(capsys, FINETUNE, "--resume", "--out", tmp_path / "stopped", "--lr", "0.01")
    assert_refused(rc, err, f"{tmp_path / 'stopped'} was started with --lr 0.003, not --lr 0.01; leave --lr out")
    rc, _, err = call_script(capsys, FINETUNE, "--resume", "--out", tmp_path / "stopped", "--no-augment")
    assert_refused(rc, err, "was started with augmentation (no --no-augment), not --no-augment")
    (small / "weights.pt").rename(small / "moved.pt")  # the checkpoint holds every weight: not needed
    try:
        rc, out, err = call_script(capsys, FINETUNE, "--resume", "--out", tmp_path / "stopped")  # nothing else
    finally:
        (small / "moved.pt").rename(small / "weights.pt")
    assert rc == 0 and "resuming" in out, err
    rc, _, err = call_script(capsys, FINETUNE, *args(tmp_path / "straight"))
    assert rc == 0, err
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("straight", "stopped"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the saved options were used: --lr, --val-size, --seed...
    rc, _, err = call_script(capsys, FINETUNE, "--resume", "--out", tmp_path / "nothing")
    assert_refused(rc, err, "nothing to resume")


@pytest.mark.slow
def test_freeze_without_augmentation_counts_the_feature_caching(small, tmp_path):
    m = trainer.main(TrainConfig(freeze=True, augment=False, weights=str(small / "weights.pt"),
                                 data_dir=str(small / "data"), out=str(tmp_path / "run"), epochs=2, batch_size=40,
                                 device="cpu", download=False))
    first, second = m["epochs"]
    assert 0 < m["feature_cache_seconds"] < first["seconds"]  # the first epoch pays for computing the features
    assert first["images_per_sec"] == pytest.approx(m["train_images"] / first["seconds"])
    assert second["seconds"] < m["feature_cache_seconds"]  # later epochs only train the head


def test_a_keras_pickle_given_as_weights_says_to_convert_it(small, tmp_path, capsys):
    from torch_resnet.conversion.convert import state_dict_to_keras
    keras = tmp_path / "course.pkl"
    keras.write_bytes(pickle.dumps(state_dict_to_keras(torch.load(small / "weights.pt", weights_only=True))))
    for script in (FINETUNE, "train/evaluate.py"):
        rc, _, err = call_script(capsys, script, "--weights", keras, "--data-dir", small / "data", "--out",
                                 tmp_path / "o", "--no-download")
        assert_refused(rc, err, f"{keras} is a Keras pickle", "convert/keras_pickle_to_pt.py", nothing_in=tmp_path / "o")


@pytest.mark.parametrize("legacy", [False, True])  # torch.save's zip format, and its pre-1.6 one
def test_a_state_dict_given_to_the_converter_says_which_script_takes_it(tmp_path, capsys, legacy):
    pt = tmp_path / "w.pt"
    torch.save(ResidualNetwork(10).state_dict(), pt, _use_new_zipfile_serialization=not legacy)
    rc, _, err = call_script(capsys, "convert/keras_pickle_to_pt.py", pt, "-o", tmp_path / "out.pt")
    assert_refused(rc, err, "is a PyTorch file (torch.save), not a Keras pickle",
                   "fine-tuning and evaluation take it as --weights")
    assert not (tmp_path / "out.pt").exists()
    before = pt.read_bytes()
    rc, _, err = call_script(capsys, "convert/keras_pickle_to_pt.py", pt)  # the default output is w.pt itself
    assert_refused(rc, err, "is a PyTorch file (torch.save), not a Keras pickle")
    assert pt.read_bytes() == before


class FailingDownload:
    """torchvision's dataset class as it behaves offline halfway: folder made, archive begun."""

    def __init__(self, root, train, download):
        from pathlib import Path
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b partial")
        raise OSError("connection reset")


def test_a_failed_download_leaves_no_folder_behind(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FailingDownload)
    with pytest.raises(UserError, match="download failed: connection reset"):
        find_or_download(tmp_path / "new" / "data", CIFAR10)
    assert left_in(tmp_path) == []  # not even new/
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    with pytest.raises(UserError, match="download failed"):
        find_or_download(tmp_path / "mine", CIFAR10)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]  # theirs kept, the archive gone


class Parsed(Exception):
    """Raised in place of parsing: carries a script's parser, before the script does anything."""


SCRIPTS = sorted(str(p.relative_to(ROOT)) for folder in ("train", "convert", "bench")
                 for p in (ROOT / folder).glob("*.py"))


def parser_of(script, monkeypatch) -> argparse.ArgumentParser:
    """The parser a script's main() builds (its parse_args never runs)."""
    def capture(parser, args=None, namespace=None):
        raise Parsed(parser)

    monkeypatch.syspath_prepend(str(ROOT / Path(script).parent))  # bench/profile_step.py imports its neighbour
    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(Parsed) as e:
            runpy.run_path(str(ROOT / script))["main"]([])
    return e.value.args[0]


def test_help_shows_the_defaults_once_and_every_option_says_what_it_does(capsys, monkeypatch):
    assert {"train/finetune.py", "convert/pt_to_keras_pickle.py", "bench/throughput.py",
            "bench/keras_peer.py"} <= set(SCRIPTS)
    for script in SCRIPTS:
        parser = parser_of(script, monkeypatch)
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            name = f"{script} {'/'.join(action.option_strings) or action.dest}"
            # errors.ArgumentParser fills in "default: %(default)s" where a script gave no help at all
            assert action.help and action.help != "default: %(default)s", f"{name} has no help text"
            shown = formatter._expand_help(action)
            assert len(re.findall(r"\(default\b|^default:", shown)) <= 1, f"{name} shows its default twice: {shown}"
    with pytest.raises(SystemExit):
        call_script(capsys, "train/evaluate.py", "--help")
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 256)" in out and "(default: data)" in out and "default: None" not in out


def test_interrupted_says_how_to_go_on(capsys):
    @cli
    def main(argv=None):
        raise KeyboardInterrupt("continue with python train/finetune.py --resume --out runs/full")

    assert main([]) == 130
    err = capsys.readouterr().err
    assert err == "error: interrupted; continue with python train/finetune.py --resume --out runs/full\n"


def test_keras_pickle_loads_as_an_array_dict(tmp_path):  # the converter's input stays a plain pickle
    from torch_resnet.formats.safe_pickle import load_array_dict
    (tmp_path / "k.pkl").write_bytes(pickle.dumps({"dense/bias": np.zeros(3, np.float32)}))
    assert list(load_array_dict(tmp_path / "k.pkl")) == ["dense/bias"]


README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
NEEDS_TENSORFLOW = re.compile(r"--keras\b|keras_model|test_training_parity|--peer keras")
KERAS_EXTRA = "pip install -e '.[keras]'"


def sections(path: Path) -> dict[str, str]:
    """A Markdown file's sections (## and ###) by title, each its heading line and text up to the next one."""
    return {part.split("\n", 1)[0]: part for part in re.split(r"(?m)^#{2,3} ", path.read_text())[1:]}


def code_blocks(text: str, lang: str = "bash") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def commands(block: str) -> list[list[str]]:
    """The commands of a bash block, as words: comments dropped, `a && b` split."""
    out = []
    for line in block.splitlines():
        line = re.sub(r"(^|\s)#.*", "", line).strip()
        for part in filter(None, (p.strip() for p in line.split("&&"))):
            out.append(shlex.split(part))
    return out


def options_of(script: str) -> str:
    """The source that defines a script's options: its cli module, or the script itself (bench/)."""
    name = SCRIPT_COMMANDS.get(script)
    return (ROOT / "torch_resnet" / "cli" / f"{name}.py").read_text() if name else (ROOT / script).read_text()


def test_the_readme_is_short_runs_on_the_demos_files_and_names_the_keras_extra():
    assert README.stat().st_size <= 10_000, f"README.md is {README.stat().st_size} bytes: move details into docs/"
    readme = sections(README)
    titles = list(readme)
    assert titles[0] == "Two commands for a fresh machine", titles  # first, right after what it is
    ci = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert [b.strip() for b in code_blocks(readme[titles[0]])][1] == ci, "the README's test command is not .ci/run's"
    demo = readme["On the demo's files"]  # one paragraph, instead of a demo note in every section
    assert "python train/demo.py" in demo and "torch-resnet demo" in demo, "the demo's paragraph names no demo command"
    for path in [README, *DOCS]:
        for title, body in sections(path).items():
            # the README's sections by their whole text, the docs' by their commands
            needs = body if path == README else "\n".join(code_blocks(body) + code_blocks(body, "python"))
            if NEEDS_TENSORFLOW.search(needs):
                assert KERAS_EXTRA in body, f"{path.name}: section {title!r} runs TensorFlow but does not say {KERAS_EXTRA}"


def test_the_commands_in_the_readme_and_docs_exist_and_give_each_run_its_folder():
    import torch_resnet
    finetunes = 0
    for path in [README, *DOCS]:
        for block in code_blocks(path.read_text()):
            outs = []
            for words in commands(block):
                if words[0] in ("python", "python3", ".venv/bin/python") and words[1:2] != ["-m"]:
                    script, args = words[1], words[2:]
                elif words[0] == "torch-resnet":
                    script, args = next(s for s, c in SCRIPT_COMMANDS.items() if c == words[1]), words[2:]
                elif words[0] == "bash" or words[:3] == [".venv/bin/python", "-m", "pytest"]:
                    script, args = None, words[1:]
                else:
                    continue  # pip, source, venv: not this project's
                for word in args:
                    if re.fullmatch(r"(bench|tests|train|convert|\.ci)/[\w/.]+", word):
                        assert (ROOT / word).is_file(), f"{path.name}: {word} does not exist ({' '.join(words)})"
                if script is None:
                    continue
                assert (ROOT / script).is_file(), f"{path.name}: {script} does not exist"
                source = options_of(script)
                for option in (w.split("=")[0] for w in args if re.match(r"--?[a-z]", w) and w not in ("-h", "--help")):
                    assert f'"{option}"' in source, f"{path.name}: {script} has no option {option} ({' '.join(words)})"
                if script == "train/finetune.py" and not {"--help", "--resume"} & set(args):
                    assert "--out" in args, f"{path.name}: {' '.join(words)} writes the default folder"
                    outs.append(args[args.index("--out") + 1])
            assert len(outs) == len(set(outs)), f"{path.name}: two fine-tuning runs write one folder: {outs}"
            finetunes += len(outs)
        for block in code_blocks(path.read_text(), "python"):
            for name in re.findall(r"\btr\.(\w+)", block):
                assert hasattr(torch_resnet, name), f"{path.name}: torch_resnet has no {name}"
    assert finetunes >= 4


def test_every_relative_link_in_the_readme_and_docs_resolves():
    def anchors(path: Path) -> set[str]:  # GitHub's: lower case, punctuation dropped, spaces to hyphens
        titles = re.findall(r"(?m)^#+ (.+)$", re.sub(r"```.*?```", "", path.read_text(), flags=re.S))
        return {re.sub(r"[^\w\- ]", "", t.strip().lower()).replace(" ", "-") for t in titles}

    links = 0
    for path in [README, *DOCS]:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.exists(), f"{path.name}: link to {target}: no such file"
            if anchor:
                assert anchor in anchors(linked), f"{path.name}: link to {target}: no such heading"
            links += 1
    assert links >= 10


def test_git_ignores_every_path_the_readme_the_docs_and_the_demo_write(tmp_path):
    # the project's .gitignore in a repository of the test's own: no checkout of ours needed
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    text = "\n".join(p.read_text() for p in [README, *DOCS])
    written = set(re.findall(r"(?:(?<![\w-])-o|--out|--json|--keep)[ =]([^\s`'\")]+)", text))
    written |= set(re.findall(r"pip wheel .*?-w ([^\s`]+)", text))
    written |= set(re.findall(r'\bout="([^"]+)"', text))  # the Python API's
    written |= set(re.findall(r'(?:to_keras|save)\([^,()]+, "([^"]+)"\)', text))
    demo = set(re.findall(r"""['"](?:-o|--out)['"], ['"]([^'"]+)['"]""", (ROOT / "torch_resnet/cli/demo.py").read_text()))
    assert demo  # the commands it prints
    written |= demo | {"demo/freeze"}  # the demo's own folder
    written = {p for p in written if not re.fullmatch(r"[A-Z]{2,}(\..*)?", p)}  # DIR, NAME.weights.h5: placeholders
    assert {"report", "model.weights.h5", "model_keras.pkl", "runs/full", "W.safetensors", "dist"} <= written
    written |= {"weights/resnet_cifar100.pt", "model.pt", "demo/data"}  # defaults: the converter's, model.keras's
    paths = []
    for p in sorted(written):
        suffix = Path(p).suffix
        paths += ([p, p + ".keras_names.json"] if suffix == ".pt" else [p] if suffix else [p + "/report.md"])
    r = subprocess.run(["git", "-C", str(tmp_path), "check-ignore", "--no-index", "--verbose", "--non-matching", *paths],
                       capture_output=True, text=True)
    not_ignored = [line.split("\t")[1] for line in r.stdout.splitlines() if line.startswith("::")]
    assert r.returncode in (0, 1) and paths and not not_ignored, (r.stderr, not_ignored)
