"""``python -m gtl_nb.sim PROVIDER …`` runs ``gtl sim PROVIDER …`` (a simulator in the foreground)."""

import sys

from gtl_nb.cli import main

sys.exit(main(["sim", *sys.argv[1:]]))
