"""Training-time augmentation: waveform (:class:`AudioAugment`), log-mel masks (:class:`SpecAugment`) and images
(:class:`ImageAugment`).

Each part is switchable by name (``AUDIO_PARTS``, ``IMAGE_PARTS``; ``TrainConfig.augment_audio`` /
``augment_image`` list them comma-separated). Waveform and image augmentation draw every random number from an
explicit ``numpy.random.Generator`` (the dataset's per-(seed, epoch, index) one), so an augmented item depends only
on the seed, the epoch and the index: the same with any number of DataLoader workers and after a resume.
:class:`SpecAugment` runs inside the model on the batch and uses torch's global RNG, which training seeds, saves
in every checkpoint and restores on resume (under torchrun, ranks other than 0 are reseeded from the seed, their rank
and the resumed epoch instead); it is the identity in ``eval()`` mode.

Augmentation is for the training split only: :class:`~ciap_lib.data.PairDataset` applies it when ``train=True``,
never in evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.signal
import torch
import torchaudio
from torch import nn

from ciap_lib.constants import SAMPLE_RATE

__all__ = ["AUDIO_PARTS", "WAVEFORM_PARTS", "IMAGE_PARTS", "parse_parts", "AudioAugment", "AudioParams",
           "SpecAugment", "set_spec_augment", "ImageAugment", "ImageParams", "Augmentations", "from_config"]

#: the parts :class:`AudioAugment` applies to the waveform
WAVEFORM_PARTS = ("gain", "shift", "noise", "speed", "tilt", "reverb")
#: the shortest reverb decay time (s) ``reverb`` draws; ``reverb_rt60_max`` may not be below it
REVERB_RT60_MIN = 0.05
#: the parts of ``augment_audio``: waveform parts (applied in the dataset) and ``specaugment`` (in the model)
AUDIO_PARTS = WAVEFORM_PARTS + ("specaugment",)
#: the parts of ``augment_image``
IMAGE_PARTS = ("crop", "affine", "jitter")


def parse_parts(text: str | Sequence[str], allowed: Sequence[str], key: str = "parts") -> list[str]:
    """``"gain, noise"`` (or a list of names) -> ``["gain", "noise"]``; ``""`` or ``"none"``/``"off"`` -> ``[]``.

    ``ValueError`` naming ``key``, the unknown name(s) and the allowed ones.
    """
    names = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for name in (str(n).strip().lower() for n in names):
        if name and name not in out:
            out.append(name)
    if out in (["none"], ["off"]):
        return []
    bad = [n for n in out if n not in allowed]
    if bad:
        raise ValueError(f"{key}: {', '.join(repr(b) for b in bad)} "
                         f"{'is not a part' if len(bad) == 1 else 'are not parts'}; "
                         f"choose from {', '.join(allowed)} (comma-separated; empty = off)")
    return out


# --------------------------------------------------------------------------------------------- audio
@dataclass(frozen=True)
class AudioParams:
    """The random draws of one item's waveform augmentation (neutral values for parts that are off)."""

    speed: float = 1.0     # playback speed factor (> 1: faster, higher pitch)
    gain_db: float = 0.0
    shift: int = 0         # samples; positive moves the sound later
    snr_db: float | None = None  # None: no noise
    pink: bool = False
    noise_seed: int = 0
    tilt: float = 0.0      # first-order filter coefficient: > 0 brighter, < 0 darker
    rt60: float = 0.0      # reverb decay time (s); 0: no reverb
    wet: float = 0.0       # reverb share of the output amplitude, in [0, 1]
    reverb_seed: int = 0


class AudioAugment:
    """Waveform augmentation of one training segment, every part switchable.

    Parts (applied in this order): ``speed`` (speed perturbation by a factor uniform in
    ``[1 - speed_perturb, 1 + speed_perturb]`` in steps of 0.01: the segment is read ``factor`` times longer and
    resampled to the segment length with ``torchaudio.transforms.Resample``, so tempo and pitch change
    together), ``shift`` (time shift by up to ``shift_max`` of the segment either way: circular, or with zeros
    shifted in when ``circular=False``), ``gain`` (uniform in ``[-gain_db, gain_db]`` dB), ``noise`` (white or pink
    noise, each half the time, at an SNR uniform in ``[snr_db_min, snr_db_max]`` dB relative to the segment's
    mean power; silent segments get none), ``tilt`` (a random spectral tilt: the first-order filter
    ``y[n] = x[n] - a x[n-1]`` with ``a`` uniform in ``[-tilt_max, tilt_max]``, brighter for ``a > 0`` and darker for
    ``a < 0``, at the segment's RMS: a random EQ for timbre that changes with the recording), ``reverb`` (a synthetic
    room: the segment convolved with an exponentially decaying noise impulse response whose decay time RT60 is
    uniform in ``[0.05, reverb_rt60_max]`` s, mixed with the dry segment at a wet share uniform in [0.2, 0.8], at the
    segment's RMS: sounds that ring on in a room, so that the encoder does not tie the class to how pulses end).

    Args:
        parts: the names of the parts to apply (a subset of ``WAVEFORM_PARTS``; ``specaugment`` is ignored here,
            it belongs to the model: :class:`SpecAugment`).

    Use ``sample(rng)`` then ``apply(wave, params)`` (the dataset reads ``source_length(T, params)`` samples
    for speed perturbation), or ``augment(wave, rng)`` for both at once.
    """

    def __init__(self, parts: Sequence[str], gain_db: float = 6.0, shift_max: float = 0.5, circular: bool = True,
                 snr_db_min: float = 10.0, snr_db_max: float = 40.0, speed_perturb: float = 0.1,
                 tilt_max: float = 0.8, reverb_rt60_max: float = 0.5):
        parts = parse_parts(parts, AUDIO_PARTS, "AudioAugment parts")
        self.parts = tuple(p for p in parts if p in WAVEFORM_PARTS)
        if gain_db < 0 or not 0 <= shift_max <= 1 or not snr_db_min <= snr_db_max or not 0 <= speed_perturb <= 0.5:
            raise ValueError(f"AudioAugment: need gain_db >= 0 ({gain_db}), 0 <= shift_max <= 1 ({shift_max}), "
                             f"snr_db_min <= snr_db_max ({snr_db_min}, {snr_db_max}), "
                             f"0 <= speed_perturb <= 0.5 ({speed_perturb})")
        self.gain_db, self.shift_max, self.circular = float(gain_db), float(shift_max), bool(circular)
        self.snr_db = (float(snr_db_min), float(snr_db_max))
        self.speed_perturb = float(speed_perturb)
        if not 0 <= tilt_max < 1:
            raise ValueError(f"AudioAugment: need 0 <= tilt_max < 1, got {tilt_max}")
        self.tilt_max = float(tilt_max)
        if not REVERB_RT60_MIN <= reverb_rt60_max <= 5:
            raise ValueError(f"AudioAugment: need {REVERB_RT60_MIN} <= reverb_rt60_max <= 5 s, got {reverb_rt60_max}")
        self.reverb_rt60_max = float(reverb_rt60_max)
        self._resamplers: dict[int, torchaudio.transforms.Resample] = {}

    def __bool__(self) -> bool:
        return bool(self.parts)

    def __repr__(self) -> str:
        return f"AudioAugment(parts={list(self.parts)})"

    def sample(self, rng: np.random.Generator, length: int) -> AudioParams:
        """Draw one item's parameters for a segment of ``length`` samples. Every part's numbers are drawn in a
        fixed order whether it is on or not, so switching one part never changes another's draws."""
        lo, hi = round(100 * (1 - self.speed_perturb)), round(100 * (1 + self.speed_perturb))
        speed = int(rng.integers(lo, hi + 1)) / 100
        gain = float(rng.uniform(-self.gain_db, self.gain_db))
        reach = int(self.shift_max * length)
        shift = int(rng.integers(-reach, reach + 1))
        snr = float(rng.uniform(*self.snr_db))
        pink = bool(rng.integers(0, 2))
        noise_seed = int(rng.integers(0, 2 ** 63))
        tilt = float(rng.uniform(-self.tilt_max, self.tilt_max))
        rt60 = float(rng.uniform(REVERB_RT60_MIN, self.reverb_rt60_max))
        wet = float(rng.uniform(0.2, 0.8))
        reverb_seed = int(rng.integers(0, 2 ** 63))
        on = self.parts
        reverb = "reverb" in on
        return AudioParams(speed=speed if "speed" in on else 1.0, gain_db=gain if "gain" in on else 0.0,
                           shift=shift if "shift" in on else 0, snr_db=snr if "noise" in on else None,
                           pink=pink, noise_seed=noise_seed, tilt=tilt if "tilt" in on else 0.0,
                           rt60=rt60 if reverb else 0.0, wet=wet if reverb else 0.0, reverb_seed=reverb_seed)

    @staticmethod
    def source_length(length: int, params: AudioParams) -> int:
        """Samples to read so that speed perturbation yields ``length`` samples (``length`` at speed 1)."""
        return int(round(length * params.speed))

    def apply(self, wave: np.ndarray, params: AudioParams, length: int | None = None) -> np.ndarray:
        """Augment ``wave`` float32 (L,) (L = ``source_length(length, params)``) -> float32 (length,)
        (``length`` defaults to L; a speed-changed segment is cut or zero-padded at the end to it)."""
        x = np.asarray(wave, dtype=np.float32)
        length = x.shape[0] if length is None else int(length)
        if params.speed != 1.0:
            q = int(round(params.speed * 100))
            if q not in self._resamplers:  # the sinc kernel of each of the few speed ratios, built once
                self._resamplers[q] = torchaudio.transforms.Resample(q, 100)
            with torch.no_grad():
                x = self._resamplers[q](torch.from_numpy(np.ascontiguousarray(x))).numpy()
        if x.shape[0] != length:
            fit = np.zeros(length, dtype=np.float32)
            fit[:min(length, x.shape[0])] = x[:length]
            x = fit
        else:
            x = x.copy()
        if params.tilt:
            x = tilt_wave(x, params.tilt)
        if params.rt60:
            x = reverb_wave(x, params.rt60, params.wet, np.random.default_rng(params.reverb_seed))
        if params.shift:
            x = shift_wave(x, params.shift, self.circular)
        if params.gain_db:
            x *= np.float32(10.0 ** (params.gain_db / 20.0))
        if params.snr_db is not None:
            power = float(np.mean(np.square(x, dtype=np.float64)))
            if power > 0:
                noise = coloured_noise(length, np.random.default_rng(params.noise_seed), params.pink)
                x += (noise * np.sqrt(power / 10.0 ** (params.snr_db / 10.0))).astype(np.float32)
        return x

    def augment(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``apply(wave, sample(rng, L))`` for a float32 (L,) segment; speed perturbation then works on the
        segment itself (a faster segment is zero-padded at the end)."""
        return self.apply(wave, self.sample(rng, wave.shape[0]), wave.shape[0])


def tilt_wave(x: np.ndarray, a: float) -> np.ndarray:
    """(T,) through ``y[n] = x[n] - a x[n-1]`` (brighter for ``a > 0``, darker for ``a < 0``), rescaled to the
    input's RMS."""
    y = x.copy()
    y[1:] -= np.float32(a) * x[:-1]
    return at_rms_of(y, x)


def at_rms_of(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``y`` rescaled to ``x``'s RMS (in ``y``'s precision), as float32; a silent ``y`` is left as it is."""
    rms_x = np.sqrt(np.mean(np.square(x, dtype=np.float64)))
    rms_y = np.sqrt(np.mean(np.square(y, dtype=np.float64)))
    return (y * y.dtype.type(rms_x / rms_y) if rms_y > 0 else y).astype(np.float32)


def reverb_wave(x: np.ndarray, rt60: float, wet: float, rng: np.random.Generator,
                sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``x`` float32 (L,) in a synthetic room: ``(1 - wet) * x + wet * (x * h)[:L]``, ``h`` white noise under an
    exponential decay reaching -60 dB after ``rt60`` seconds (unit energy), rescaled to ``x``'s RMS; float32 (L,)."""
    n = max(1, int(round(rt60 * sample_rate)))
    t = np.arange(n) / sample_rate
    h = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)
    h /= np.sqrt(np.sum(h * h))
    xs = x.astype(np.float64)
    wet_x = scipy.signal.fftconvolve(xs, h)[:len(xs)]
    return at_rms_of((1.0 - wet) * xs + wet * wet_x, x)


def shift_wave(x: np.ndarray, shift: int, circular: bool = True) -> np.ndarray:
    """(T,) moved ``shift`` samples later (earlier when negative): rolled round, or with zeros shifted in."""
    if circular:
        return np.roll(x, shift)
    out = np.zeros_like(x)
    if shift > 0:
        out[shift:] = x[:-shift]
    elif shift < 0:
        out[:shift] = x[-shift:]
    else:
        out[:] = x
    return out


def coloured_noise(length: int, rng: np.random.Generator, pink: bool = False) -> np.ndarray:
    """float64 (length,) noise of mean power exactly 1: white, or pink (power spectrum ~ 1/f)."""
    n = rng.standard_normal(length)
    if pink:
        spec = np.fft.rfft(n)
        f = np.arange(spec.shape[0], dtype=np.float64)
        f[0] = 1.0
        spec /= np.sqrt(f)
        spec[0] = 0.0
        n = np.fft.irfft(spec, n=length)
    n -= n.mean()
    power = float(np.mean(n * n))
    return n / np.sqrt(power) if power > 0 else n


class SpecAugment(nn.Module):
    """SpecAugment masks on a log-mel input (B,C,n_mels,frames), in training mode only (identity in ``eval()``).

    ``n_masks`` frequency masks of up to ``freq_mask`` mel bins and as many time masks of up to ``time_mask``
    frames (``torchaudio.transforms.FrequencyMasking`` / ``TimeMasking``), drawn independently per example
    from torch's global RNG (seeded by training and restored on resume). Masked values become 0: the mean
    of the encoder's per-clip standardised log-mel. No parameters or buffers, so checkpoints do not change.
    """

    def __init__(self, freq_mask: int = 8, time_mask: int = 20, n_masks: int = 1):
        super().__init__()
        if freq_mask < 0 or time_mask < 0 or n_masks < 1:
            raise ValueError(f"SpecAugment: need freq_mask >= 0 ({freq_mask}), time_mask >= 0 ({time_mask}), "
                             f"n_masks >= 1 ({n_masks})")
        self.freq_mask, self.time_mask, self.n_masks = int(freq_mask), int(time_mask), int(n_masks)
        masks: list[nn.Module] = []
        for _ in range(self.n_masks):
            if self.freq_mask:
                masks.append(torchaudio.transforms.FrequencyMasking(self.freq_mask, iid_masks=True))
            if self.time_mask:
                masks.append(torchaudio.transforms.TimeMasking(self.time_mask, iid_masks=True))
        self.masks = nn.Sequential(*masks)

    def extra_repr(self) -> str:
        return f"freq_mask={self.freq_mask}, time_mask={self.time_mask}, n_masks={self.n_masks}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,n_mels,frames) -> same shape, masked in training mode."""
        if not self.training:
            return x
        return self.masks(x)


def set_spec_augment(model: nn.Module, module: nn.Module | None) -> None:
    """Put ``module`` (a :class:`SpecAugment`; None: ``nn.Identity``) in the log-mel front end of ``model``'s audio
    encoder (its ``spec_augment`` slot). ``ValueError`` when the audio encoder has no log-mel input."""
    enc = getattr(model, "audio_encoder", model)
    if not hasattr(enc, "spec_augment"):
        name = type(enc).__name__
        raise ValueError(f"specaugment masks a log-mel input; the audio encoder {name} has none "
                         "(use audio_encoder 'logmel_cnn' or 'logmel_cnn_tc')")
    enc.spec_augment = module if module is not None else nn.Identity()


# --------------------------------------------------------------------------------------------- images
@dataclass(frozen=True)
class ImageParams:
    """The random draws of one item's image augmentation (None for parts that are off)."""

    crop: tuple[int, int, int, int] | None = None             # top, left, height, width
    affine: tuple[float, float, float, float] | None = None   # angle (deg), dx, dy (px), scale
    jitter: tuple[float, float, float, float] | None = None   # brightness, contrast, saturation factors, hue shift


class ImageAugment:
    """Image augmentation of one preprocessed uint8 (S,S,3) image with the functional API of
    ``torchvision.transforms.v2``, every part switchable; the result has the same size S.

    Parts (in this order): ``crop`` (RandomResizedCrop: area scale in ``[crop_scale_min, 1]``, aspect ratio in
    [3/4, 4/3] log-uniform, resized back to S), ``affine`` (rotation up to ``degrees``, translation up to
    ``translate`` of S, scale in ``[1 - scale, 1 + scale]``, black fill), ``jitter`` (colour jitter: brightness,
    contrast, saturation factors in ``[1 - j, 1 + j]``, hue shift up to ``hue``).

    The parameters are drawn from the given numpy Generator (not torch's global RNG), so an item's result
    depends only on that Generator.
    """

    def __init__(self, parts: Sequence[str], crop_scale_min: float = 0.5, degrees: float = 10.0,
                 translate: float = 0.1, scale: float = 0.1, brightness: float = 0.2, contrast: float = 0.2,
                 saturation: float = 0.2, hue: float = 0.02):
        self.parts = tuple(parse_parts(parts, IMAGE_PARTS, "ImageAugment parts"))
        if not 0 < crop_scale_min <= 1:
            raise ValueError(f"ImageAugment: crop_scale_min must be in (0, 1], got {crop_scale_min}")
        if not 0 <= scale < 1:
            raise ValueError(f"ImageAugment: scale must be in [0, 1), got {scale}")
        self.crop_scale = (float(crop_scale_min), 1.0)
        self.ratio = (3 / 4, 4 / 3)
        self.degrees, self.translate, self.scale = float(degrees), float(translate), float(scale)
        self.jitter = (float(brightness), float(contrast), float(saturation), float(hue))

    def __bool__(self) -> bool:
        return bool(self.parts)

    def __repr__(self) -> str:
        return f"ImageAugment(parts={list(self.parts)})"

    def sample(self, rng: np.random.Generator, height: int, width: int) -> ImageParams:
        """Draw one item's parameters for an image of ``height`` x ``width``, in a fixed order whether a part
        is on or not (switching one part never changes another's draws)."""
        crop = self._crop_params(rng, height, width)
        angle = float(rng.uniform(-self.degrees, self.degrees))
        dx = float(np.round(rng.uniform(-self.translate, self.translate) * width))
        dy = float(np.round(rng.uniform(-self.translate, self.translate) * height))
        scale = float(rng.uniform(1 - self.scale, 1 + self.scale))
        b, c, s, h = self.jitter
        jit = (float(rng.uniform(1 - b, 1 + b)), float(rng.uniform(1 - c, 1 + c)), float(rng.uniform(1 - s, 1 + s)),
               float(rng.uniform(-h, h)))
        on = self.parts
        return ImageParams(crop=crop if "crop" in on else None, affine=(angle, dx, dy, scale) if "affine" in on else None,
                           jitter=jit if "jitter" in on else None)

    def _crop_params(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        """RandomResizedCrop's parameter search (torchvision's ``get_params``) with ``rng``: 10 tries, then the
        centre crop of the nearest allowed aspect ratio. Always draws the same count of numbers."""
        area = height * width
        log_ratio = np.log(self.ratio)
        draws = rng.uniform(size=(10, 4))
        for u_area, u_ratio, u_top, u_left in draws:
            target = area * (self.crop_scale[0] + u_area * (self.crop_scale[1] - self.crop_scale[0]))
            ratio = float(np.exp(log_ratio[0] + u_ratio * (log_ratio[1] - log_ratio[0])))
            w = int(round(np.sqrt(target * ratio)))
            h = int(round(np.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = min(int(u_top * (height - h + 1)), height - h)
                left = min(int(u_left * (width - w + 1)), width - w)
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, image: np.ndarray, params: ImageParams) -> np.ndarray:
        """uint8 (S,S,3) -> augmented uint8 (S,S,3) (any H,W: the output keeps the input's size)."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        if params.crop is None and params.affine is None and params.jitter is None:
            return image
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3,H,W) uint8
        h, w = x.shape[1:]
        if params.crop is not None:
            top, left, ch, cw = params.crop
            x = TF.resized_crop(x, top, left, ch, cw, [h, w], interpolation=InterpolationMode.BILINEAR,
                                antialias=True)
        if params.affine is not None:
            angle, dx, dy, scale = params.affine
            x = TF.affine(x, angle=angle, translate=[dx, dy], scale=scale, shear=[0.0, 0.0],
                          interpolation=InterpolationMode.BILINEAR, fill=0)
        if params.jitter is not None:
            b, c, s, hue = params.jitter
            x = TF.adjust_brightness(x, b)
            x = TF.adjust_contrast(x, c)
            x = TF.adjust_saturation(x, s)
            x = TF.adjust_hue(x, hue)
        return np.ascontiguousarray(x.permute(1, 2, 0).numpy())

    def augment(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``apply(image, sample(rng, H, W))`` for a uint8 (H,W,3) image."""
        return self.apply(image, self.sample(rng, image.shape[0], image.shape[1]))


# --------------------------------------------------------------------------------------------- from a config
@dataclass
class Augmentations:
    """What a training config asks for: each None when off."""

    audio: AudioAugment | None = None
    image: ImageAugment | None = None
    spec: SpecAugment | None = None


def from_config(cfg) -> Augmentations:
    """The augmentations of a :class:`~ciap_lib.config.TrainConfig` (``augment_audio``, ``augment_image`` and the
    strength keys); parts that are off give None."""
    audio_parts = parse_parts(cfg.augment_audio, AUDIO_PARTS, "augment_audio")
    image_parts = parse_parts(cfg.augment_image, IMAGE_PARTS, "augment_image")
    audio = AudioAugment(audio_parts, gain_db=cfg.gain_db, snr_db_min=cfg.noise_snr_db_min,
                         snr_db_max=cfg.noise_snr_db_max, speed_perturb=cfg.speed_perturb, tilt_max=cfg.tilt_max,
                         reverb_rt60_max=cfg.reverb_rt60_max)
    image = ImageAugment(image_parts, crop_scale_min=cfg.crop_scale_min, degrees=cfg.affine_degrees,
                         scale=cfg.affine_scale)
    spec = (SpecAugment(cfg.specaug_freq_mask, cfg.specaug_time_mask) if "specaugment" in audio_parts else None)
    return Augmentations(audio=audio or None, image=image or None, spec=spec)
