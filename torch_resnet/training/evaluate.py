"""Test-split evaluation of a ResidualNetwork state dict (``train/evaluate.py``): top-1/top-5,
loss, per-class accuracy, a confusion matrix, and optionally agreement with Keras itself."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..conversion.convert import keras_to_state_dict, state_dict_to_keras
from ..data.cifar import FORMATS, CifarFormat, CifarSplit, DeviceBatches, load_cifar
from .distributed import pick_device
from ..errors import UserError, check_count
from ..data.images import ImageFolderSource
from ..formats.files import load_model, refuse_run_folder
from ..model import ResidualNetwork
from .outputs import STAND_IN_NOTE, confusion_figure, title_stand_in, write_json, write_png
from .performance import amp_dtype, autocast, describe, keep_freed_memory
from ..formats.keras_files import read_keras_file


def pick_dataset(num_classes: int, dataset: str | None, weights) -> CifarFormat:
    """The dataset asked for, or the one with as many classes as the head; they must agree."""
    by_classes = {f.num_classes: f for f in FORMATS.values()}
    if dataset is None:
        if num_classes not in by_classes:
            raise UserError(f"{weights}: the head has {num_classes} classes; no CIFAR dataset has that many")
        return by_classes[num_classes]
    fmt = FORMATS[dataset]
    if fmt.num_classes != num_classes:
        hint = f" (use --dataset {by_classes[num_classes].name})" if num_classes in by_classes else ""
        raise UserError(f"{weights}: the head has {num_classes} classes but {fmt.name} has {fmt.num_classes}{hint}")
    return fmt


def predict(model: ResidualNetwork, split: CifarSplit, batch_size: int, device, *,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits (float32, CPU) for every image of ``split``, in order, in inference mode: fp32
    unless ``dtype`` (an autocast dtype) is given, in the fastest layout (channels_last)."""
    device = torch.device(device)
    model.to(device, memory_format=torch.channels_last).eval()
    batches = DeviceBatches(split, batch_size, device, shuffle=False, augment=False, channels_last=True,
                            mode=model.preprocess)
    with torch.inference_mode(), autocast(device.type, dtype):
        return torch.cat([model(x).float().cpu() for x, _ in batches.epoch(0)])


def metrics(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> tuple[dict, np.ndarray]:
    """The scores, and the confusion matrix (rows: true class, columns: predicted)."""
    c = logits.shape[1]
    pred = logits.argmax(1)
    top5 = logits.topk(min(5, c), 1).indices.eq(labels[:, None]).any(1)
    confusion = torch.bincount(labels * c + pred, minlength=c * c).view(c, c)
    counts, correct = confusion.sum(1).tolist(), confusion.diag().tolist()
    return {
        "top1": (pred == labels).double().mean().item(),
        "top5": top5.double().mean().item(),
        "loss": F.cross_entropy(logits.double(), labels).item(),
        # a class without test images has no accuracy (null, not NaN: JSON has no NaN)
        "per_class": {name: (k / m if m else None) for name, k, m in zip(class_names, correct, counts)},
        "per_class_images": dict(zip(class_names, counts)),
    }, confusion.numpy()


def evaluate(weights, *, shortcut_from_raw: bool = False, **options) -> dict:
    """Evaluate the state dict at ``weights`` (``evaluate_model``'s options)."""
    check_options(options.get("batch_size", 256), options.get("out"))
    return evaluate_model(load_model(weights, shortcut_from_raw), str(weights), shortcut_from_raw=shortcut_from_raw,
                          **options)


def check_options(batch_size: int, out) -> None:
    check_count("`batch_size`", batch_size)
    if out is not None:
        refuse_run_folder(out, "`out`")


def evaluate_model(model: ResidualNetwork, source: str | None = None, *, dataset: str | None = None, data_dir="data",
                   out=None, batch_size: int = 256, device: str | None = None, keras_pickle=None,
                   shortcut_from_raw: bool = False, download: bool = True, amp: str = "auto", test_dir=None,
                   image_size: int | None = None) -> dict:
    """Evaluate ``model`` (read from ``source``, a path, or None for a network in memory) on the test
    split, or on the images in ``test_dir`` (class sub-folders, ``image_size`` x ``image_size``, by
    default the network's input size); with ``out`` write eval.json and confusion.png there. With ``keras_pickle`` (any Keras file
    the converter reads), also run Keras with it and compare its logits with PyTorch's.
    ``amp``: ``auto`` and ``off`` are fp32 (an exact number), ``bf16``/``fp16`` autocast."""
    check_options(batch_size, out)
    named = source or "the network"
    if model.num_classes is None:
        raise UserError(f"{named}: a network without a classifier head (its output is features); fine-tune one first")
    if keras_pickle is not None and not isinstance(model, ResidualNetwork):
        raise UserError("`keras` compares with the course network run in Keras; for a keras.applications ResNet "
                        "the converter's parity is checked by bench/applications_parity.py")
    dev = pick_device(device or "auto")
    dtype = amp_dtype(amp, dev, training=False)
    if dev.type == "cpu":
        keep_freed_memory()
    if test_dir is not None:
        name, split = folder_test_split(model, test_dir, image_size, named)
    else:
        fmt = pick_dataset(model.num_classes, dataset, named)
        name, split = fmt.name, load_cifar(data_dir, fmt, "test", download)
    keras_state = None if keras_pickle is None else keras_weights(keras_pickle, shortcut_from_raw, model.num_classes)
    logits = predict(model, split, batch_size, dev, dtype=dtype)
    if not torch.isfinite(logits).all():
        raise UserError(f"{named}: the network gives non-finite logits (broken weights, e.g. a negative "
                        f"BatchNorm variance)")
    scores, confusion = metrics(logits, split.labels, split.class_names)
    report = {"weights": source, "dataset": name, "data_dir": str(test_dir or data_dir), "num_classes": model.num_classes,
              "n_images": len(split.labels), "stand_in_data": split.stand_in, "settings": describe(dev, dtype, True),
              **scores}
    if keras_pickle is not None:
        from ..conversion.keras_predict import keras_logits

        # The pickle's names depend on its Keras session; mapped to torch keys and back to fresh
        # Keras 3 names, they are the exact variable paths of keras_model.build in a new session.
        k = torch.from_numpy(keras_logits(state_dict_to_keras(keras_state), split.images.numpy(),
                                          shortcut_from_raw, batch_size))
        report["keras"] = {"pickle": str(keras_pickle),
                           "top1": (k.argmax(1) == split.labels).double().mean().item(),
                           "agreement": (k.argmax(1) == logits.argmax(1)).double().mean().item(),
                           "max_abs_dlogit": (k - logits).abs().max().item()}
    if out is not None:
        title = (f"{name} test, {report['n_images']} images: top-1 {report['top1']:.2%}"
                 + (f"\n{Path(source).name}" if source else ""))
        fig = confusion_figure(confusion, split.class_names, title)
        write_png(Path(out) / "confusion.png", title_stand_in(fig) if split.stand_in else fig, dpi=120)
        write_json(Path(out) / "eval.json", report, indent=1)
    return report


def folder_test_split(model, test_dir, image_size: int | None, named: str) -> tuple[str, CifarSplit]:
    """(what the report calls it, every image of ``test_dir``), its classes checked against the head."""
    if image_size is not None and not 32 <= image_size <= 4096:
        raise UserError(f"`image_size` must be between 32 and 4096 pixels, got {image_size}")
    source = ImageFolderSource(test_dir, test_dir=test_dir, image_size=image_size or model.image_size)
    if source.num_classes != model.num_classes:
        raise UserError(f"{named}: the head has {model.num_classes} classes, {test_dir} {source.num_classes} class folders")
    return f"image folder {source.name}", source.split("test")


def keras_weights(keras_pickle, shortcut_from_raw: bool, num_classes: int) -> dict:
    """The Keras file's weights as a state dict, checked before the long work starts."""
    if importlib.util.find_spec("tensorflow") is None:
        raise UserError("`keras` needs TensorFlow: pip install tensorflow-cpu (or pip install -e '.[keras]')")
    keras_state, mapping = keras_to_state_dict(read_keras_file(keras_pickle).arrays, shortcut_from_raw)
    if mapping.num_classes != num_classes:
        raise UserError(f"{keras_pickle}: {mapping.num_classes} classes, the weights have {num_classes}")
    return keras_state


def format_summary(report: dict, worst: int = 5) -> str:
    lines = [f"{report['dataset']} test, {report['n_images']} images, weights {report['weights']} "
             f"({report['settings']})",
             f"top-1 {report['top1']:.2%}   top-5 {report['top5']:.2%}   loss {report['loss']:.4f}"]
    if report.get("stand_in_data"):
        lines.insert(1, f"{STAND_IN_NOTE}: these figures test the pipeline, not the network")
    n_images = report["per_class_images"]
    scored = sorted((acc, i, name) for i, (name, acc) in enumerate(report["per_class"].items())
                    if acc is not None and acc < 1)
    lines.append("worst classes: " + (", ".join(f"{name} {acc:.1%} ({round(acc * n_images[name])}/{n_images[name]})"
                                                for acc, _, name in scored[:worst])
                                      or "none: every class with test images is at 100 %"))
    if "keras" in report:
        k = report["keras"]
        lines.append(f"keras: top-1 {k['top1']:.2%}, argmax agreement {k['agreement']:.2%}, "
                     f"max|dlogit| {k['max_abs_dlogit']:.2e}")
    return "\n".join(lines)
