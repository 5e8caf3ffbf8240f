"""The keras.applications ResNets (torch_resnet/applications) against Keras' own, built in a child
process (tests/make_keras_applications.py; no TensorFlow here): parameter counts, logits and
features of converted weights, the way back, refused names, and each Keras trap done the
PyTorch-habit way breaking parity (proof that the checks would see it)."""
import functools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import (APPLICATIONS_ALSO, APPLICATIONS_CLASSES, APPLICATIONS_POOLING, APPLICATIONS_SIZE,
                      FIGURES)
from torch_resnet.applications import SPECS, build, keras_to_torch, name_table, torch_to_keras
from torch_resnet.applications.resnet import BottleneckV2
from torch_resnet.errors import UserError
from torch_resnet.model import count_parameters

pytestmark = [pytest.mark.keras, pytest.mark.slow]

POOLING, SIZE, CLASSES, ALSO = APPLICATIONS_POOLING, APPLICATIONS_SIZE, APPLICATIONS_CLASSES, APPLICATIONS_ALSO
TOL = 1e-4  # of max |logit| (fp32)


@pytest.fixture(scope="module")
def keras_child(keras_applications):
    yield keras_applications
    cached.cache_clear()  # hundreds of MB the rest of the session has no use for


@dataclass
class Network:
    name: str
    keras: dict  # Keras' counts
    arrays: dict  # {Keras path: array}, in the order of Keras' model.weights
    state: dict  # converted
    ref: dict  # inputs and Keras' outputs

    def model(self, include_top=True):
        """Keras' weights in our module (eval mode); without the top, with POOLING[name]."""
        state = self.state if include_top else {k: v for k, v in self.state.items() if not k.startswith("head.")}
        with torch.device("meta"):  # no initialisation: every tensor comes from Keras
            model = build(self.name, include_top=include_top, pooling=POOLING[self.name], classes=CLASSES)
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()


def load(child, name):
    counts = child.wait_for(name)
    with np.load(child.folder / f"{name}.npz") as saved, np.load(child.folder / f"{name}_outputs.npz") as ref:
        arrays = {k: saved[k] for k in saved.files}
        return Network(name, counts, arrays, keras_to_torch(arrays, name), {k: ref[k] for k in ref.files})


@pytest.fixture(scope="module", params=list(SPECS))
def network(request, keras_child):
    """One network at a time (pytest groups the tests by it): its arrays are hundreds of MB."""
    return load(keras_child, request.param)


@functools.lru_cache(maxsize=2)
def cached(child, name):  # ResNet50 and ResNet50V2 for the tests after the six
    return load(child, name)


def gap(model, x_nhwc, reference):
    """(max |ours - Keras'|, max |Keras'|) on Keras' NHWC input; NHWC feature maps compared as NCHW."""
    with torch.no_grad():
        ours = model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()
    if reference.ndim == 4:
        reference = reference.transpose(0, 3, 1, 2)
    assert ours.shape == reference.shape
    return float(np.abs(ours - reference).max()), float(np.abs(reference).max())


def test_parameter_counts_equal_keras(network):
    name, keras = network.name, network.keras
    with torch.device("meta"):
        top = count_parameters(build(name, classes=CLASSES))
        notop = count_parameters(build(name, include_top=False, pooling=POOLING[name]))
    FIGURES.append((f"applications {name} parameters", f"ours {top['total']:,} / Keras {keras['top']:,} (top, "
                                                       f"{CLASSES} classes); ours {notop['total']:,} / Keras "
                                                       f"{keras['notop']:,} (no top)"))
    assert (top["total"], notop["total"], top["trainable"]) == (keras["top"], keras["notop"], keras["top_trainable"])


def test_logits_and_features_equal_keras(network):
    name, ref = network.name, network.ref
    dlogit, logit = gap(network.model(), ref["x"], ref["logits"])
    dfeature, feature = gap(network.model(include_top=False), ref["x"], ref["features"])
    FIGURES.append((f"applications {name} {SIZE}x{SIZE}", f"max|dlogit| {dlogit:.2e} (max|logit| {logit:.2f}), "
                                                          f"pooling={POOLING[name]} max|dfeature| {dfeature:.2e} "
                                                          f"(max {feature:.2f})"))
    assert logit > 0.1 and feature > 0.5, "outputs too small for a meaningful check"
    assert dlogit <= TOL * logit and dfeature <= TOL * feature


def test_the_way_back_gives_keras_weights_exactly(network):
    back = torch_to_keras(network.model().state_dict(), network.name)
    assert list(back) == list(network.arrays) == list(name_table(network.name, include_top=True))  # Keras' order
    assert all(back[k].dtype == a.dtype and np.array_equal(back[k], a) for k, a in network.arrays.items())
    notop = torch_to_keras(network.model(include_top=False).state_dict(), network.name)
    assert list(notop) == [k for k in network.arrays if not k.startswith("predictions/")]


@pytest.mark.parametrize("also", ALSO)
def test_other_input_sizes(keras_child, also):
    name, hw = also.split(":")
    net = cached(keras_child, name)
    dlogit, logit = gap(net.model(), net.ref[f"x_{hw}"], net.ref[f"logits_{hw}"])
    FIGURES.append((f"applications {name} {hw}", f"max|dlogit| {dlogit:.2e} (max|logit| {logit:.2f})"))
    assert dlogit <= TOL * logit


def test_names_that_do_not_fit_are_refused(keras_child):
    net = cached(keras_child, "ResNet50")
    arrays = dict(net.arrays)
    assert set(keras_to_torch({f"{k}:0": v for k, v in arrays.items()}, "ResNet50")) == set(net.state)  # Keras 2
    notop = keras_to_torch({k: v for k, v in arrays.items() if not k.startswith("predictions/")}, "ResNet50")
    assert set(notop) == {k for k in net.state if not k.startswith("head.")}
    del arrays["conv3_block2_2_bn/moving_variance"]
    with pytest.raises(UserError, match="no 'conv3_block2_2_bn/moving_variance'"):
        keras_to_torch(arrays, "ResNet50")
    with pytest.raises(UserError, match=r"Keras weights of ResNet50V2: no 'conv2_block1_preact_bn/gamma' \(and"):
        keras_to_torch(arrays, "ResNet50V2")
    state = dict(net.state)
    state["backbone.extra.weight"] = state.pop("backbone.stem.bn.weight")
    with pytest.raises(UserError, match="no 'backbone.stem.bn.weight'.*1 more"):
        torch_to_keras(state, "ResNet50")


# Each Keras trap done the PyTorch way: (network, what breaks it in a converted model).
def eps_default(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3  # Keras' default epsilon, the course network's


def mean_variance_swapped(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean, m.running_var = m.running_var, m.running_mean.abs()


def stride_on_3x3(model):  # torchvision's "ResNet v1.5"
    for block in (b for s in model.backbone.stages for b in s):
        if block.conv1.stride == (2, 2):
            block.conv1.stride, block.shortcut_conv.stride, block.conv2.stride = (1, 1), (2, 2), (2, 2)


def pool_padded_with_minus_inf(model):  # PyTorch's MaxPool2d(padding=1)
    model.backbone.stem.pool = nn.MaxPool2d(3, 2, padding=1)


def tf_same_padding_at_stride_2(model):  # TensorFlow's "same": 0 before, 1 after on even sizes
    for block in (b for s in model.backbone.stages for b in s):
        if block.stride == 2:
            block.conv2.padding = (0, 0)
            block.conv2.register_forward_pre_hook(lambda m, args: (F.pad(args[0], (0, 1, 0, 1)),))


def v2_stride_on_first_block(model):  # v1's placement in a V2 network
    for stage in model.backbone.stages:
        first, last = stage[0], stage[-1]
        if last.stride == 2:
            first.conv2.stride, first.shortcut_conv.stride = (2, 2), (2, 2)
            last.conv2.stride, last.stride = (1, 1), 1


def v2_shortcut_from_preactivation(model):
    def forward(self, x):
        pre = F.relu(self.preact_bn(x))
        subsampled = pre[:, :, ::self.stride, ::self.stride]  # of the pre-activated input, not x
        shortcut = subsampled if self.shortcut_conv is None else self.shortcut_conv(pre)
        y = F.relu(self.bn1(self.conv1(pre)))
        return self.conv3(F.relu(self.bn2(self.conv2(y)))) + shortcut

    for m in model.modules():
        if isinstance(m, BottleneckV2):
            m.forward = forward.__get__(m)


TRAPS = [("ResNet50", eps_default), ("ResNet50", mean_variance_swapped), ("ResNet50", stride_on_3x3),
         ("ResNet50V2", eps_default), ("ResNet50V2", pool_padded_with_minus_inf),
         ("ResNet50V2", tf_same_padding_at_stride_2), ("ResNet50V2", v2_stride_on_first_block),
         ("ResNet50V2", v2_shortcut_from_preactivation)]


@pytest.mark.parametrize("name, trap", TRAPS, ids=[f"{n}-{t.__name__}" for n, t in TRAPS])
def test_each_trap_breaks_parity(keras_child, name, trap):
    net = cached(keras_child, name)
    model = net.model()
    trap(model)
    dlogit, logit = gap(model, net.ref["x"], net.ref["logits"])
    FIGURES.append((f"applications trap {name} {trap.__name__}", f"max|dlogit| {dlogit:.2e} (max|logit| {logit:.2f})"))
    assert not dlogit <= TOL * logit  # NaN counts as broken


def test_v1_hides_the_pool_padding(keras_child):
    """v1 pools after a ReLU (values >= 0), where zero and -inf padding agree: only V2 shows it."""
    net = cached(keras_child, "ResNet50")
    model = net.model()
    pool_padded_with_minus_inf(model)
    dlogit, logit = gap(model, net.ref["x"], net.ref["logits"])
    assert dlogit <= TOL * logit
