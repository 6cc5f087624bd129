"""XAStruct: link X-ray absorption spectra and crystal structure.

Stages live in flat modules: store, readers, labels, ingest, feff/simulate, library, models, train,
screen, report. The click CLI in :mod:`xastruct.cli` only parses arguments and calls them.
"""

__version__ = "0.1.0"
