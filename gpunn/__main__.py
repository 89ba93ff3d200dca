"""`python -m gpunn ...` runs the `gpunn` command (see gpunn/cli.py)."""
import sys

from gpunn.cli import main

if __name__ == "__main__":
    sys.exit(main())
