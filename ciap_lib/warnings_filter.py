"""Third-party warnings known to be harmless, silenced in this ONE place.

:func:`install` runs when ``ciap_lib`` is imported (``ciap_lib/__init__.py``), so it applies wherever the
library starts: the command line, every notebook kernel (each notebook imports ``ciap_lib`` in its first code
cell) and the tests. Each filter matches one message from one module, so any other warning still shows.
Add a warning here only with the reason it is harmless.

Not a Python warning and so not here: ipykernel's log line "Kernel is running over TCP without encryption".
The pipeline avoids it by starting its kernels with transport encryption (``pipeline.kernel_manager_config``).
"""
from __future__ import annotations

import warnings

#: (message regex, category, module regex of the code that warns, why it is harmless)
HARMLESS: tuple[tuple[str, type[Warning], str, str], ...] = (
    (r"Argument 'onesided' has been deprecated", UserWarning, r"torchaudio\.transforms\._transforms",
     # audioldm 0.1.1's CLAP audio tower (audioldm/clap/training/data.py, get_mel) builds
     # torchaudio.transforms.MelSpectrogram(onesided=True). torchaudio 2.9 deprecated the argument and ignores
     # it: MelSpectrogram always uses the one-sided spectrum, which is what onesided=True asked for. The
     # features are the same; only audioldm's (pinned, unmaintained) call site is outdated.
     "torchaudio ignores onesided=True and computes exactly what audioldm's CLAP asks for"),
)


def install() -> None:
    """Add an ``ignore`` filter for each entry of :data:`HARMLESS` (idempotent)."""
    for message, category, module, _why in HARMLESS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
