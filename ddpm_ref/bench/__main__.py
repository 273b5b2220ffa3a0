"""``python -m ddpm_ref.bench`` (the same as ``python -m ddpm_ref bench``)."""

import sys

from .runner import main

sys.exit(main())
