"""``python -m ddpm_ref …``: see :mod:`ddpm_ref.cli`."""

from .cli.main import main

raise SystemExit(main())
