"""Backbones: sequence models mapping token ids to hidden states (see :mod:`nfl.models.base`)."""

from nfl.models.base import Backbone
from nfl.models.gpt import GPT
from nfl.models.hf import HFCausalLM
from nfl.models.mamba import Mamba

__all__ = ["Backbone", "GPT", "HFCausalLM", "Mamba"]
