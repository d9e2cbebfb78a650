"""CIAP library."""
from ciap_lib import warnings_filter as _warnings_filter

_warnings_filter.install()  # known-harmless third-party warnings only; see ciap_lib/warnings_filter.py
