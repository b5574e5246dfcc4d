"""``python -m colabrcnn ...`` runs the ``colabrcnn`` command."""
import sys

from .cli import main

sys.exit(main())
