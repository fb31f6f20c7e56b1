"""``python -m gtl_nb`` runs the ``gtl`` command."""

import sys

from gtl_nb.cli import main

sys.exit(main())
