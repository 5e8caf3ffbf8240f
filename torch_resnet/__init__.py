"""Exact PyTorch port of the course's Keras pre-activation SiLU ResNet, with its converter,
fine-tuning on CIFAR-10, evaluation, reports and the way back to Keras (``api.py``)."""
from .api import Report, Run, evaluate, finetune, from_keras, load, report, save, to_keras
from .errors import UserError
from .model import ResidualNetwork, count_parameters, images_to_input, summary

__all__ = ["Report", "ResidualNetwork", "Run", "UserError", "count_parameters", "evaluate", "finetune", "from_keras",
           "images_to_input", "load", "report", "save", "summary", "to_keras"]
