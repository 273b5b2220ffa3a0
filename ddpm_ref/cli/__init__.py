"""The command line (:mod:`.main`: ``python -m ddpm_ref …``) and the four-minute demo (:mod:`.demo`)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
