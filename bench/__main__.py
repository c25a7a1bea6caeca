"""`python -m bench [--rounds N] [--quick] [--only a,b] [--profile]`: see bench/run.py."""

import sys

from bench.run import main, parse

sys.exit(main(parse()))
