"""Download, verify and prepare the criasr datasets (the same command as `criasr-fetch`).

    python -m data_scripts.fetch NAME [NAME ...] --root DIR [--mirror URL] [--scales 2 3 4]
    python -m data_scripts.fetch --list

The logic lives in the package, `criasr.fetch` (chapter nbs/07_fetch.ipynb); this script only calls it.
"""
import sys

from criasr.fetch import main

if __name__ == "__main__": sys.exit(main())
