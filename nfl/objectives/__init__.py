"""Training objectives: each owns its inputs, loss and decoding (see :mod:`nfl.objectives.base`)."""

from nfl.objectives.base import Objective, ObjectiveOutput
from nfl.objectives.multi_token import MultiTokenHeads
from nfl.objectives.teacher_forcing import TeacherForcing
from nfl.objectives.teacherless import Teacherless

__all__ = ["MultiTokenHeads", "Objective", "ObjectiveOutput", "TeacherForcing", "Teacherless"]
