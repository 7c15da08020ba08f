"""The path-star task's size and its reference "numeral" token ids (SPEC §1).

Node ``i`` is token ``i``; the four punctuation tokens sit right above the nodes:
``|`` = N, ``=`` = N+1, ``/`` = N+2 and the dummy ``$`` = N+3. Commas are not tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from nfl.errors import UserInputError


class InfeasibleGraphError(UserInputError):
    """A G(d, l, N) that cannot be drawn: it needs more distinct labels than there are nodes."""


@dataclass(frozen=True)
class PathStarTask:
    """G(degree, path_len, num_nodes) and everything derived from it: token ids and sequence lengths."""

    degree: int
    path_len: int
    num_nodes: int

    def __post_init__(self) -> None:
        if self.degree < 1:
            raise InfeasibleGraphError(f"degree must be >= 1, got {self.degree}.")
        if self.path_len < 2:
            raise InfeasibleGraphError(
                f"path_len must be >= 2 (start and goal are distinct nodes), got {self.path_len}."
            )
        if self.num_labels > self.num_nodes:
            raise InfeasibleGraphError(
                f"G(degree={self.degree}, path_len={self.path_len}, num_nodes={self.num_nodes}) is infeasible: "
                f"a graph needs degree*(path_len-1)+1 = {self.num_labels} distinct node labels but num_nodes is "
                f"{self.num_nodes}. Raise num_nodes to at least {self.num_labels}, or lower degree or path_len."
            )

    # --- sizes -------------------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        """Distinct labels in one graph: the centre plus ``path_len - 1`` nodes on each arm."""
        return self.degree * (self.path_len - 1) + 1

    @property
    def num_edges(self) -> int:
        return self.degree * (self.path_len - 1)

    @property
    def prefix_len(self) -> int:
        """Tokens up to and including ``=``: ``3*d*(l-1) + 3``."""
        return 3 * self.num_edges + 3

    @property
    def target_len(self) -> int:
        return self.path_len

    @property
    def seq_len(self) -> int:
        """Model input length under teacher forcing: prefix + target[:-1]."""
        return self.prefix_len + self.target_len - 1

    @property
    def chance(self) -> float:
        """Decision-token accuracy of a model that picks an arm uniformly."""
        return 1.0 / self.degree

    # --- token ids ---------------------------------------------------------------------------------
    @property
    def pipe(self) -> int:
        return self.num_nodes

    @property
    def eq(self) -> int:
        return self.num_nodes + 1

    @property
    def slash(self) -> int:
        return self.num_nodes + 2

    @property
    def dummy(self) -> int:
        return self.num_nodes + 3

    @property
    def vocab_size(self) -> int:
        return self.num_nodes + 4
