"""``python -m daemon`` runs the ``contourd`` command."""

import sys

from daemon.cli import main

sys.exit(main())
