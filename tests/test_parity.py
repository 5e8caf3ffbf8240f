"""Converted weights must give Keras' numbers: logits and pooled features, several namings."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import FIGURES, call_script
from torch_resnet import ResidualNetwork, images_to_input
from torch_resnet.conversion.convert import convert_pickle
from torch_resnet.model import Conv2dSame

pytestmark = [pytest.mark.keras, pytest.mark.slow]  # the session's Keras process

SCHEMES = ["keras3", "keras3_seed_numbering", "keras2_seed_numbering_shortcut_first", "keras2_flat",
           "shortcut_from_raw"]
TOL = 1e-4


def converted_model(keras_fixtures, scheme, tmp_path):
    raw = scheme == "shortcut_from_raw"
    convert_pickle(keras_fixtures / f"{scheme}.pkl", tmp_path / "w.pt", shortcut_from_raw=raw)
    model = ResidualNetwork(100, shortcut_from_raw=raw)
    model.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True), strict=True)
    return model.eval()


def keras_outputs(keras_fixtures, scheme):
    ref = np.load(keras_fixtures / f"{scheme}.npz")
    return images_to_input(torch.from_numpy(ref["images"])), ref["logits"], ref["features"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_logits_and_features_match_keras(keras_fixtures, scheme, tmp_path):
    model = converted_model(keras_fixtures, scheme, tmp_path)
    x, logits, features = keras_outputs(keras_fixtures, scheme)
    with torch.no_grad():
        ours, ours_features = model(x).numpy(), model.backbone(x).numpy()
    assert np.abs(logits).max() >= 10, "logits too small for a meaningful 1e-4 check"
    assert np.abs(features).max() > 0.5
    dlogit, dfeat = np.abs(ours - logits).max(), np.abs(ours_features - features).max()
    FIGURES.append((f"parity {scheme}", f"max|dlogit| {dlogit:.2e} (max|logit| {np.abs(logits).max():.1f}), "
                                        f"max|dfeature| {dfeat:.2e}"))
    assert dlogit <= TOL and dfeat <= TOL
    assert (ours.argmax(1) == logits.argmax(1)).all()


def test_converter_reports_every_tensor(keras_fixtures, tmp_path, capsys):
    out = tmp_path / "seed.pt"
    rc, stdout, err = call_script(capsys, "convert/keras_pickle_to_pt.py",
                                  keras_fixtures / "keras3_seed_numbering.pkl", "-o", out, "-v")
    assert rc == 0, err
    assert "sequential_3/residual_block_9/conv2d_23/kernel  (3, 3, 16, 64)  ->  backbone.blocks.0.conv1.weight" in stdout
    assert "sequential_3/dense_1/kernel  (256, 100)  ->  head.weight" in stdout
    assert "residual_block_17" in stdout and "converted 100 Keras tensors (100 classes)" in stdout
    state = torch.load(out, weights_only=True)
    ResidualNetwork(100).load_state_dict(state, strict=True)


# Each numerical trap, done the PyTorch-default way, must break parity: proof that the check above
# would catch it.
def _symmetric_padding_forward(self, x):
    return F.conv2d(x, self.weight, None, self.stride, self.kernel_size[0] // 2)


@pytest.mark.parametrize("trap", ["symmetric_padding", "pytorch_bn_eps", "kernel_hw_swapped"])
def test_each_numerical_trap_breaks_parity(keras_fixtures, trap, tmp_path, monkeypatch):
    model = converted_model(keras_fixtures, "keras3", tmp_path)
    x, logits, _ = keras_outputs(keras_fixtures, "keras3")
    if trap == "symmetric_padding":
        monkeypatch.setattr(Conv2dSame, "forward", _symmetric_padding_forward)
    elif trap == "pytorch_bn_eps":
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eps = 1e-5
    else:  # HWIO -> OIHW done as a plain reverse, which swaps H and W
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.copy_(m.weight.transpose(2, 3).clone())
    with torch.no_grad():
        d = np.abs(model(x).numpy() - logits).max()
    FIGURES.append((f"trap {trap}", f"max|dlogit| {d:.2e}"))
    assert d > 100 * TOL
