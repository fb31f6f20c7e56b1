"""``python -m gtl_nb.gateway --stdio --config FILE`` serves GTL on standard input and output."""

import sys

from gtl_nb.gateway.main import main

sys.exit(main())
