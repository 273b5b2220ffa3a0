"""``python -m ddpm_ref …``: see :mod:`ddpm_ref.cli`."""

from .cli import main

raise SystemExit(main())
