"""``python -m gtl_nb.sim PROVIDER …`` runs ``gtl sim PROVIDER …`` (a simulator in the foreground).

The simulators import nothing from the rest of gtl_nb, so the command's parser is built here from
``gtl_nb.sim.cli`` alone, as ``gtl`` builds it."""

import argparse
import sys

from gtl_nb.sim.cli import add_subcommands

parser = argparse.ArgumentParser(prog="gtl")
add_subcommands(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(["sim", *sys.argv[1:]])
sys.exit(args.handler(args))
