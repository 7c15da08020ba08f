"""The reproduction atlas: each published path-star claim beside what nfl measures."""
