"""The Python API (torch_resnet.api) does what the scripts do: same numbers, same files, same errors."""
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file

import torch_resnet as tr
from conftest import assert_refused, call_script, left_in
from torch_resnet import UserError
from torch_resnet.cli.shell import to_shell
from torch_resnet.data.cifar import CIFAR10
from torch_resnet.formats.keras_names import names_sidecar
from torch_resnet.formats.safe_pickle import load_array_dict
from torch_resnet.data.synthetic import write_cifar

# 24 training images, 8 of them held out, 16 test images: one step per epoch
TINY = dict(batch_size=16, val_size=8, seed=1, device="cpu", amp="off", download=False)


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def script_args(tiny, out, **options):
    opts = {**TINY, "data_dir": tiny / "data", "out": out, **options}
    args = []
    for name, value in opts.items():
        args += ["--no-download"] if name == "download" else [f"--{name.replace('_', '-')}", value]
    return args


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    write_cifar(root / "data", CIFAR10, train_size=24, test_size=16, seed=2)
    return root


@pytest.fixture(scope="module")
def api_runs(setup, tiny):
    """Both regimes through the API: the frozen one from a network object, the full one from it."""
    _, weights = setup
    start = tr.load(weights)
    frozen = tr.finetune(start, freeze=True, epochs=1, data_dir=tiny / "data", out=tiny / "freeze", **TINY)
    assert start.num_classes == 100 and type(start.backbone.blocks[0].bn1) is torch.nn.BatchNorm2d  # unchanged
    full = tr.finetune(frozen, epochs=1, data_dir=tiny / "data", out=tiny / "full", **TINY)
    return frozen, full


def test_from_keras_gives_keras_logits(keras_fixtures, tmp_path):
    model = tr.from_keras(keras_fixtures / "keras3_seed_numbering.pkl")
    assert left_in(tmp_path) == []  # nothing written without out=, no temporary file left
    ref = np.load(keras_fixtures / "keras3_seed_numbering.npz")
    with torch.no_grad():
        logits = model(tr.images_to_input(torch.from_numpy(ref["images"]))).numpy()
    assert np.abs(ref["logits"]).max() >= 10 and np.abs(logits - ref["logits"]).max() <= 1e-4
    raw = tr.from_keras(keras_fixtures / "shortcut_from_raw.pkl", shortcut_from_raw=True, out="raw.pt")
    ref = np.load(keras_fixtures / "shortcut_from_raw.npz")
    with torch.no_grad():
        logits = raw(tr.images_to_input(torch.from_numpy(ref["images"]))).numpy()
    assert np.abs(logits - ref["logits"]).max() <= 1e-4
    assert same_state(tr.load("raw.pt", shortcut_from_raw=True).state_dict(), raw.state_dict())


def test_from_keras_writes_what_the_converter_writes(keras_fixtures, capsys):
    pkl = keras_fixtures / "keras2_seed_numbering_shortcut_first.pkl"
    tr.from_keras(pkl, out="api.pt")
    rc, _, err = call_script(capsys, "convert/keras_pickle_to_pt.py", pkl, "-o", "script.pt")
    assert rc == 0, err
    assert same_state(torch.load("api.pt", weights_only=True), torch.load("script.pt", weights_only=True))
    assert names_sidecar("api.pt").read_text() == names_sidecar("script.pt").read_text()


def test_save_and_load_keep_the_keras_names(setup):
    _, weights = setup
    model = tr.load(weights)
    assert not model.training and next(model.parameters()).device.type == "cpu"
    tr.save(model, "copy.pt")
    assert names_sidecar("copy.pt").read_text() == names_sidecar(weights).read_text()
    assert same_state(torch.load("copy.pt", weights_only=True), torch.load(weights, weights_only=True))
    tr.save(tr.ResidualNetwork(10), "copy.pt")  # a network of no Keras file: the earlier names go
    assert not names_sidecar("copy.pt").exists() and tr.load("copy.pt").num_classes == 10


def test_the_keras_names_travel_with_the_network_in_every_format(keras_fixtures):
    """.safetensors (metadata) and .pt (sidecar), written by from_keras or save, read by load: the
    way back gives the source pickle's names and arrays, bit for bit."""
    pkl = keras_fixtures / "keras3_seed_numbering.pkl"
    source = load_array_dict(pkl)
    model = tr.from_keras(pkl, out="conv.safetensors")
    assert not names_sidecar("conv.safetensors").exists()
    copies = [Path("conv.safetensors"), tr.save(tr.load("conv.safetensors"), "copy.safetensors"),
              tr.save(model, "copy.pt")]
    for path in copies:
        back = load_array_dict(tr.to_keras(tr.load(path), "back.pkl"))
        assert list(back) == list(source) and all(np.array_equal(back[k], source[k]) for k in source), path
    assert same_state(load_file("copy.safetensors"), model.state_dict())  # a real safetensors file
    assert tr.load("copy.safetensors").keras_names.record()["source"] == str(pkl)


def test_the_api_makes_no_temporary_folder(api_runs, tiny, keras_fixtures, monkeypatch):
    """Conversion, evaluation, the report and the export work on the network in memory."""
    import tempfile

    def refuse(*args, **kwargs):
        raise AssertionError("a temporary folder was made")

    _, full = api_runs
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    model = tr.from_keras(keras_fixtures / "keras3_seed_numbering.pkl")
    assert tr.evaluate(full.model, data_dir=tiny / "data", device="cpu", download=False)["weights"] is None
    assert tr.report(full).markdown.startswith("#")
    tr.to_keras(model, "m.weights.h5")
    assert left_in(Path()) == ["m.weights.h5"]


@pytest.mark.slow
def test_finetune_gives_the_scripts_weights_in_both_regimes(api_runs, tiny, setup, tmp_path, capsys):
    frozen, full = api_runs
    _, weights = setup
    rc, _, err = call_script(capsys, "train/finetune.py", "--freeze", "--weights", weights, "--epochs", 1,
                             *script_args(tiny, tmp_path / "freeze"))
    assert rc == 0, err
    assert same_state(frozen.model.state_dict(), torch.load(tmp_path / "freeze/model.pt", weights_only=True))
    rc, _, err = call_script(capsys, "train/finetune.py", "--init-from", tmp_path / "freeze/model.pt", "--epochs", 1,
                             *script_args(tiny, tmp_path / "full"))
    assert rc == 0, err
    assert same_state(full.model.state_dict(), torch.load(tmp_path / "full/model.pt", weights_only=True))
    # the runs are what they say: the full one started from the frozen one's model.pt, head included
    assert (frozen.metrics["regime"], full.metrics["regime"]) == ("freeze", "full")
    assert full.metrics["config"]["init_from"] == str(tiny / "freeze/model.pt")
    assert full.metrics["learning_rates"] == {"backbone": 1e-5, "head": 1e-5}
    assert not torch.equal(full.model.head.weight, frozen.model.head.weight)
    # the network object was copied, not changed, and its Keras names came along for the way back
    assert frozen.metrics["config"]["weights"] == "<ResidualNetwork object>"
    assert names_sidecar(frozen.folder / "model.pt").is_file() and not (tiny / "freeze/start.pt").exists()
    assert "test top-1" in repr(full) and "data:image/png;base64," in frozen._repr_html_()


@pytest.mark.slow
def test_evaluate_a_run_its_network_or_its_file(api_runs, tiny, tmp_path):
    _, full = api_runs
    by_run = tr.evaluate(full, data_dir=tiny / "data", device="cpu", download=False)
    by_model = tr.evaluate(full.model, data_dir=tiny / "data", device="cpu", download=False, out="eval")
    assert by_run["dataset"] == "cifar10" and by_run["n_images"] == 16
    assert by_run["top1"] == by_model["top1"] == full.metrics["test_accuracy"]
    assert by_run["per_class"] == by_model["per_class"] == full.metrics["test_per_class"]
    assert by_run["loss"] == pytest.approx(full.metrics["test_loss"], rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["confusion.png", "eval.json"]


@pytest.mark.slow
def test_report_inline_and_in_files(api_runs, tmp_path):
    frozen, full = api_runs
    shown = tr.report([frozen, full])
    assert left_in(tmp_path) == []  # nothing written without out=, no temporary file left
    page = shown._repr_html_()
    assert page.count("data:image/png;base64,") == 3
    assert "<body" not in page and "<html" not in page and "body{" not in page  # the notebook keeps its style
    assert f"{100 * full.metrics['test_accuracy']:.2f} %" in page and str(frozen.folder) in page
    written = tr.report([str(frozen.folder), full.folder], out="rep")
    assert (tmp_path / "rep/report.html").read_text() == written.html
    assert (tmp_path / "rep/report.md").read_text() == written.markdown == shown.markdown
    figures = shown.figures()
    assert list(figures) == ["curves.png", "per_class.png", "confusion.png"]
    assert all(isinstance(f, Figure) and f.axes for f in figures.values())
    assert isinstance(full.curves(), Figure) and len(full.curves().axes) == 2


@pytest.mark.slow
def test_to_keras_writes_what_the_export_script_writes(api_runs, tmp_path, capsys):
    _, full = api_runs
    assert tr.to_keras(full.model, "api.pkl") == Path("api.pkl")
    rc, _, err = call_script(capsys, "convert/pt_to_keras_pickle.py", full.folder / "model.pt", "-o", "script.pkl")
    assert rc == 0, err
    api, script = load_array_dict("api.pkl"), load_array_dict("script.pkl")
    assert list(api) == list(script) and all(np.array_equal(api[k], script[k]) for k in api)
    assert any(k.startswith("sequential/residual_block/") for k in api)  # the source pickle's names, kept
    assert same_state(tr.from_keras("api.pkl").state_dict(), full.model.state_dict())  # and back, bit for bit
    fresh = load_array_dict(tr.to_keras(full, "fresh.pkl", keras3_names=True))
    assert "sequential/dense/kernel" in fresh and fresh["sequential/dense/kernel"].shape == (256, 10)


@pytest.mark.slow
def test_errors_are_the_scripts_in_python_terms(api_runs, setup, tmp_path, capsys):
    """The API's errors name its parameters and calls; the scripts say the same in their options."""
    frozen, _ = api_runs
    _, weights = setup
    with pytest.raises(UserError, match=r"finetune\(\) has no option 'epoch'; its options: .*epochs"):
        tr.finetune(weights, epoch=3)
    with pytest.raises(UserError, match="^`init_from` starts the full regime from a `freeze=True` run; it cannot"):
        tr.finetune(frozen, freeze=True)
    with pytest.raises(UserError, match=r"^`lr` must be a number in \(0, 1\], got 2$"):
        tr.finetune(weights, lr=2)
    kept = {p.name: p.read_bytes() for p in frozen.folder.iterdir()}
    with pytest.raises(UserError, match="already holds a finished run .*pass `overwrite=True` to replace it") as e:
        tr.finetune(frozen.model, freeze=True, out=frozen.folder)  # refused before anything is written
    assert "resume" not in str(e.value)  # resuming a finished run would only be refused in turn
    assert {p.name: p.read_bytes() for p in frozen.folder.iterdir()} == kept
    rc, _, err = call_script(capsys, "convert/keras_pickle_to_pt.py", weights, "-o", "x.pt")
    with pytest.raises(UserError) as as_api:
        tr.from_keras(weights, out="x.pt")
    assert "`weights`" in str(as_api.value) and "--" not in str(as_api.value)
    assert_refused(rc, err, to_shell(str(as_api.value)), "take it as --weights")
    with pytest.raises(UserError, match="is a Keras pickle"):
        tr.load(setup[0] / "keras3.pkl")


@pytest.mark.slow
def test_finetune_prints_its_first_line_and_a_line_per_epoch(setup, tiny, tmp_path, capsys):
    """Outside a terminal tqdm draws no bar: a script's log (or a notebook) sees the run go on."""
    capsys.readouterr()
    run = tr.finetune(setup[1], freeze=True, epochs=2, data_dir=tiny / "data", out=tmp_path / "q", **TINY)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("freeze: cpu"), lines  # the settings and why
    assert [line[:9] for line in lines[1:]] == ["epoch 1/2", "epoch 2/2"], lines  # not the test and "wrote" lines
    assert len(run.metrics["epochs"]) == 2
