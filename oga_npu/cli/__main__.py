"""`python -m oga_npu.cli` (as the old module oga_npu/cli.py allowed); `python -m oga_npu` is the usual way."""

from .root import main

main()
