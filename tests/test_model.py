import pytest
import torch

from torch_resnet import ResidualNetwork, count_parameters, images_to_input, summary
from torch_resnet.model import same_padding

# The seed's model.summary() (Figure 1): output shape (NHWC, batch dropped) and parameters per row.
SEED_TABLE = [((32, 32, 16), 432), ((32, 32, 64), 47424), ((32, 32, 64), 74240), ((32, 32, 64), 74240),
              ((16, 16, 128), 230144), ((16, 16, 128), 295936), ((16, 16, 128), 295936),
              ((8, 8, 256), 919040), ((8, 8, 256), 1181696), ((8, 8, 256), 1181696),
              ((8, 8, 256), 1024), ((8, 8, 256), 0), ((256,), 0), ((100,), 25700)]


def test_parameter_counts_match_the_seed():
    counts = count_parameters(ResidualNetwork(100))
    assert counts == {"total": 4327508, "trainable": 4322100, "non_trainable": 5408}
    assert all(m.bias is None for m in ResidualNetwork().modules() if isinstance(m, torch.nn.Conv2d))


def test_summary_rows_match_the_seed_table():
    lines = summary(ResidualNetwork(100)).splitlines()
    rows = [l for l in lines if "(None" in l]
    assert len(rows) == len(SEED_TABLE)
    for row, (shape, params) in zip(rows, SEED_TABLE):
        assert "(None, " + ", ".join(map(str, shape)) + ")" in row
        assert row.rstrip().endswith(f"{params:,}")
    assert "Total params: 4,327,508" in lines and "Non-trainable params: 5,408" in lines


def test_batchnorm_uses_keras_epsilon():
    bns = [m for m in ResidualNetwork().modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 19 and all(m.eps == 1e-3 for m in bns)


@pytest.mark.parametrize("size,kernel,stride,expected", [(32, 3, 2, (0, 1)), (32, 3, 1, (1, 1)),
                                                         (32, 1, 2, (0, 0)), (33, 3, 2, (1, 1)), (16, 1, 1, (0, 0))])
def test_same_padding_is_tensorflows(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_head_can_be_swapped_and_backbone_gives_features():
    model = ResidualNetwork(100)
    model.head = torch.nn.Linear(256, 10)
    x = torch.randn(2, 3, 32, 32)
    assert model.backbone(x).shape == (2, 256) and model(x).shape == (2, 10)


def test_images_to_input_scales_to_minus_one_one_in_nchw():
    images = torch.tensor([0, 255, 127], dtype=torch.uint8).view(1, 1, 1, 3).expand(2, 4, 4, 3)
    x = images_to_input(images)
    assert x.shape == (2, 3, 4, 4)
    assert x[0, :, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 127 / 127.5 - 1])
    assert torch.equal(images_to_input(images.permute(0, 3, 1, 2).contiguous()), x)
    fast = images_to_input(images, channels_last=True)  # the layout the trainer feeds on CUDA and CPU
    assert torch.equal(fast, x) and fast.is_contiguous(memory_format=torch.channels_last)


def test_inference_path_equals_training_path():
    # Without autograd the blocks apply SiLU in place; the numbers must not change.
    torch.manual_seed(0)
    model = ResidualNetwork(10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fast = model(x)
    assert torch.equal(fast, model(x).detach())


def test_summary_leaves_the_models_mode_as_it_was():
    model = ResidualNetwork(100).train()
    summary(model)
    assert model.training and all(m.training for m in model.modules())
    summary(model.eval())
    assert not any(m.training for m in model.modules())
