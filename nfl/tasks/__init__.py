"""Graph tasks: the contract (:class:`GraphTask`) and the tasks nfl ships, each chosen by ``class_path``."""

from nfl.tasks.base import DataFileError, GraphTask, InfeasibleGraphError
from nfl.tasks.dag_search import DagSearch
from nfl.tasks.maze import Maze
from nfl.tasks.path_star import PathStar
from nfl.tasks.tree_star import TreeStar

__all__ = ["DagSearch", "DataFileError", "GraphTask", "InfeasibleGraphError", "Maze", "PathStar", "TreeStar"]
