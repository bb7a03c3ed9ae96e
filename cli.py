#!/usr/bin/env python3
"""Run cnndsl from a checkout without installing it: `python cli.py analyze specs/vgg16.yaml`.

The command itself lives in cnndsl/cli.py; installed, it is the `cnndsl` command.
"""
import sys

from cnndsl.cli import main

if __name__ == "__main__":
    sys.exit(main())
