"""Exact PyTorch port of the course's Keras pre-activation SiLU ResNet."""
from .errors import UserError
from .model import ResidualNetwork, count_parameters, images_to_input, summary

__all__ = ["ResidualNetwork", "UserError", "count_parameters", "images_to_input", "summary"]
