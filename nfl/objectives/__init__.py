"""Training objectives: each owns its inputs, loss and decoding (see :mod:`nfl.objectives.base`)."""

from nfl.objectives.base import Objective, ObjectiveOutput
from nfl.objectives.belief_state import BeliefState
from nfl.objectives.masked_diffusion import MaskedDiffusion
from nfl.objectives.multi_token import MultiTokenHeads
from nfl.objectives.nextlat import NextLat
from nfl.objectives.sequential_multi_token import SequentialMultiToken
from nfl.objectives.teacher_forcing import TeacherForcing
from nfl.objectives.teacherless import Teacherless
from nfl.objectives.token_order import TokenOrder

__all__ = [
    "BeliefState", "MaskedDiffusion", "MultiTokenHeads", "NextLat", "Objective", "ObjectiveOutput", "TeacherForcing",
    "Teacherless",
    "SequentialMultiToken", "TokenOrder",
]
