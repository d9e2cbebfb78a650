"""ciap_lib.warnings_filter: the known-harmless third-party warnings are silenced once ciap_lib is imported; any
other warning, from the same module or not, still shows."""
import warnings

import pytest
import torchaudio

import ciap_lib  # noqa: F401  (importing the library installs the filters)
from ciap_lib import warnings_filter


def test_onesided_deprecation_is_silenced_and_other_warnings_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings_filter.install()  # catch_warnings resets the filters; install again inside it
        torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=1024, n_mels=64, onesided=True)
        torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=400, n_mels=128)  # all-zero filterbank
        warnings.warn("Argument 'onesided' has been deprecated (but not from torchaudio)", UserWarning)
    messages = [str(w.message) for w in caught]
    assert not any(m.startswith("Argument 'onesided' has been deprecated and") for m in messages), messages
    assert any("all zero values" in m for m in messages), messages  # torchaudio's other warnings still show
    assert any("not from torchaudio" in m for m in messages), messages


@pytest.mark.parametrize("entry", warnings_filter.HARMLESS, ids=lambda e: e[0])
def test_each_filter_says_why_it_is_harmless(entry):
    message, category, module, why = entry
    assert issubclass(category, Warning) and module and len(why) > 20
