"""The device-side augmentation: the same operation as torchvision's per-image version, the same
distribution, and reproducible from (seed, epoch)."""
import torch
import torchvision.transforms.v2.functional as TF

from torch_resnet.data.cifar import CifarSplit, DeviceBatches


def split(n=64):
    g = torch.Generator().manual_seed(0)
    return CifarSplit(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n), [])


def test_crop_and_flip_is_torchvisions_pad_crop_flip():
    images = split(16).images
    offsets = torch.randint(0, 9, (16, 2), generator=torch.Generator().manual_seed(1))
    flips = torch.arange(16) % 2 == 0
    out = DeviceBatches.crop_and_flip(images, offsets, flips)
    for i in range(16):
        ref = TF.crop(TF.pad(images[i], [4]), int(offsets[i, 0]), int(offsets[i, 1]), 32, 32)
        if flips[i]:
            ref = TF.horizontal_flip(ref)
        assert torch.equal(out[i], ref), i


def draws(batches, epoch):
    """Recover each image's offsets and flip from the augmented batches (their content is unique)."""
    padded = torch.nn.functional.pad(batches.images, (4,) * 4)
    found = []
    for x, y in batches.epoch(epoch):
        for img, label in zip(((x + 1) * 127.5).round().to(torch.uint8), y):
            hits = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                    if torch.equal(img, padded[label, :, dy:dy + 32, dx:dx + 32].flip(-1) if f
                                   else padded[label, :, dy:dy + 32, dx:dx + 32])]
            found.append((int(label), hits[0]))
    return found


def test_offsets_uniform_flips_half_and_every_image_once():
    batches = DeviceBatches(split(), 16, "cpu", shuffle=True, augment=True, seed=7)
    found = draws(batches, 0) + draws(batches, 1) + draws(batches, 2)
    assert sorted(label for label, _ in found[:64]) == list(range(64))  # a permutation per epoch
    dys = torch.tensor([d[0] for _, d in found])
    dxs = torch.tensor([d[1] for _, d in found])
    flips = torch.tensor([d[2] for _, d in found], dtype=torch.float)
    assert dys.min() == 0 and dys.max() == 8 and dxs.min() == 0 and dxs.max() == 8
    assert abs(dys.float().mean() - 4) < 0.8 and abs(dxs.float().mean() - 4) < 0.8  # uniform 0..8: mean 4
    assert 0.35 < flips.mean() < 0.65


def test_reproducible_per_seed_and_epoch():
    a = DeviceBatches(split(), 16, "cpu", shuffle=True, augment=True, seed=7)
    b = DeviceBatches(split(), 16, "cpu", shuffle=True, augment=True, seed=7)
    first = [x for x, _ in a.epoch(3)]
    assert all(torch.equal(p, q) for p, q in zip(first, (x for x, _ in b.epoch(3))))
    assert not torch.equal(first[0], next(a.epoch(4))[0])
    assert not torch.equal(first[0], next(DeviceBatches(split(), 16, "cpu", shuffle=True, augment=True,
                                                        seed=8).epoch(3))[0])


def test_shards_partition_each_global_batch():
    whole = DeviceBatches(split(), 16, "cpu", shuffle=True, augment=True, seed=7)
    ranks = [DeviceBatches(split(), 8, "cpu", shuffle=True, augment=True, seed=7, shard=(r, 2)) for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(whole.epoch(1), ranks[0].epoch(1), ranks[1].epoch(1)):
        assert sorted(y.tolist()) == sorted(y0.tolist() + y1.tolist())
        both = torch.cat([x0, x1])[torch.cat([y0, y1]).argsort()]
        assert torch.equal(x[y.argsort()], both)  # the same crops and flips, whoever computes them
