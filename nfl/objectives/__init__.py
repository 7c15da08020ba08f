"""Training objectives: each owns its inputs, loss and decoding (see :mod:`nfl.objectives.base`)."""

from nfl.objectives.base import Objective, ObjectiveOutput
from nfl.objectives.belief_state import BeliefState
from nfl.objectives.masked_diffusion import MaskedDiffusion
from nfl.objectives.masked_teacher_forcing import MaskedTeacherForcing
from nfl.objectives.multi_token import MultiTokenHeads
from nfl.objectives.nextlat import NextLat
from nfl.objectives.rank_into_future import RankIntoFuture
from nfl.objectives.registers import Registers
from nfl.objectives.sequential_multi_token import SequentialMultiToken
from nfl.objectives.teacher_forcing import TeacherForcing
from nfl.objectives.teacherless import Teacherless
from nfl.objectives.token_order import TokenOrder
from nfl.objectives.trelawney import Trelawney

__all__ = [
    "BeliefState", "MaskedDiffusion", "MaskedTeacherForcing", "MultiTokenHeads", "NextLat", "Objective",
    "ObjectiveOutput", "RankIntoFuture", "Registers", "SequentialMultiToken", "TeacherForcing", "Teacherless",
    "TokenOrder", "Trelawney",
]
