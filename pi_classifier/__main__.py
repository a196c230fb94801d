"""Allow ``python -m pi_classifier``."""

import sys

from pi_classifier.cli import main

sys.exit(main())
