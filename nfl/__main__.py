"""Entry point of ``python -m nfl``."""

from nfl.cli import main

if __name__ == "__main__":
    main()
