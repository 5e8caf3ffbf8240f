"""The options of a fine-tuning run, checked once, where they are made."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import UserError, check_count
from ..formats.files import DEFAULT_STATE_DICT

DEFAULT_LR = {"freeze": 1e-3, "full": 1e-5}
HEAD_LR = 1e-3  # a new, randomly initialised head needs an ordinary rate even in the full regime
AMP_MODES = ("auto", "bf16", "fp16", "off")
TORCH_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_MODES = ("off", *TORCH_COMPILE_MODES)
RECIPES = ("default", "keras")  # keras: Keras' Adam, constant rate, Dense init (keras_recipe.py)


@dataclass
class TrainConfig:
    freeze: bool = False
    weights: str = str(DEFAULT_STATE_DICT)
    init_from: str | None = None  # a --freeze run's model.pt: start the full regime from it
    data_dir: str = "data"  # CIFAR-10's folder, or an image folder: one sub-folder per class
    test_dir: str | None = None  # an image folder's test images (same classes); default: a held-out tenth
    val_dir: str | None = None  # an image folder's validation images; default: val_size held out
    image_size: int | None = None  # image folders: the side images are resized to; default the network's own
    skip_bad_images: bool = False  # image folders: skip (and count) files that are not readable images
    head: str | None = None  # keras.applications ResNets: the new head's Dense widths, "1024,200" (the last: classes)
    head_dropout: float = 0.0  # ... with a Dropout of this rate before each Dense after the first
    out: str | None = None  # default runs/<regime>
    epochs: int = 10
    batch_size: int = 256
    lr: float | None = None  # default DEFAULT_LR[regime]
    head_lr: float | None = None  # full regime; default HEAD_LR, or lr when the head is pretrained
    weight_decay: float = 5e-4  # not used by --recipe keras
    recipe: str = "default"
    val_size: float = 0.1  # a fraction of the training images (0 < v < 1) or a count of them; 0: no validation
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16, else off) | bf16 | fp16 | off
    augment: bool = True
    channels_last: bool | None = None  # default: on (fastest on CPU and CUDA)
    compile: str | None = None  # None (auto): frozen_backbone.py's choice; off: eager; else a torch.compile mode
    step_memory: bool = False  # measure one extra, undone step's memory before training
    resume: bool = False
    overwrite: bool = False
    download: bool = True
    log_every: int = 50  # steps between loss read-backs (each one is a device sync)

    def __post_init__(self):
        check_types(self)
        for name in ("epochs", "batch_size", "log_every"):
            check_count(option(name), getattr(self, name))
        if not (self.val_size == 0 or 0 < self.val_size < 1 or self.val_size >= 1 and float(self.val_size).is_integer()):
            raise UserError(f"`val_size` must be a fraction below 1 (0.1: a tenth of the training images), a whole "
                            f"number of images, or 0 (no validation); got {self.val_size}")
        if self.recipe not in RECIPES:
            raise UserError(f"`recipe` must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        for name in ("lr", "head_lr"):
            v = getattr(self, name)
            if v is not None and not 0 < v <= 1:  # also refuses NaN; above 1 AdamW only diverges
                raise UserError(f"{option(name)} must be a number in (0, 1], got {v}")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"`seed` must be between 0 and 2**32 - 1, got {self.seed}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"`weight_decay` must be >= 0, got {self.weight_decay}")
        if self.amp not in AMP_MODES:
            raise UserError(f"`amp` must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.freeze and self.init_from:
            raise UserError("`init_from` starts the full regime from a `freeze=True` run; it cannot be used with "
                            "`freeze=True`")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise UserError(f"`compile` must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if self.image_size is not None and not 32 <= self.image_size <= 4096:
            raise UserError(f"`image_size` must be between 32 and 4096 pixels, got {self.image_size}")
        if self.head is not None:
            self.head_widths()
        if self.head is not None and self.init_from is not None:
            raise UserError("`head` makes a new head; `init_from` keeps the frozen run's: give one of them")
        if not 0 <= self.head_dropout < 1:
            raise UserError(f"`head_dropout` must be in [0, 1), got {self.head_dropout}")
        if self.out == "":
            raise UserError("`out` must name a folder")

    def head_widths(self) -> list[int]:
        """``head`` as numbers: "1024,200" -> [1024, 200]."""
        try:
            widths = [int(w) for w in str(self.head).split(",")]
        except ValueError:
            widths = []
        if not widths or min(widths) < 1:
            raise UserError(f"`head` lists the Dense layers' widths, the last the number of classes "
                            f"(\"1024,200\"); got {self.head!r}")
        return widths

    def val_count(self, n: int) -> int:
        """How many of ``n`` training images are held out for validation."""
        return max(1, round(self.val_size * n)) if 0 < self.val_size < 1 else int(self.val_size)

    @property
    def regime(self) -> str:
        return "freeze" if self.freeze else "full"

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.regime}")


# What each option's value may be: options also come from a saved checkpoint and the Python API.
KINDS = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,), "None": (type(None),)}
SAID_AS = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "text", "None": "unset"}


def check_types(cfg: TrainConfig) -> None:
    for f in fields(cfg):
        names = str(f.type).replace(" ", "").split("|")  # "float | None" -> ["float", "None"]
        value = getattr(cfg, f.name)
        allowed = sum((KINDS[n] for n in names), ())
        if not isinstance(value, allowed) or (isinstance(value, bool) and "bool" not in names):
            raise UserError(f"{option(f.name)} must be {' or '.join(SAID_AS[n] for n in names)}, got {value!r}"[:200])


def option(field: str) -> str:
    """A field named in a message, as the API names it (the command line shows ``--batch-size``)."""
    return f"`{field}`"
