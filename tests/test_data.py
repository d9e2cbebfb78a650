"""ciap_lib.data: odd real-world images/audio, both layouts, bad files (errors and skip_bad), crops, loader."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ciap_lib.audio_io import BadFileError
from ciap_lib.data import EpochSampler, PairDataset, make_loader
from ciap_lib.pairs import scan_pairs
from fixtures.odd_files import BAD_CASES, good_pair, make_bad_case, odd_audio, odd_images, rgb_image, write_audio

S = 32


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory):
    """root/mixed: every odd image paired with an odd audio file (folder layout); root/csv: pairs.csv."""
    root = tmp_path_factory.mktemp("odd")
    src_i, src_a = odd_images(root / "src_img"), odd_audio(root / "src_aud")
    mixed = root / "mixed"
    mixed.mkdir()
    audios = list(src_a.values())
    for n, (kind, ip) in enumerate(sorted(src_i.items())):
        ap = audios[n % len(audios)]
        os.link(ip, mixed / f"{kind}{ip.suffix}")
        os.link(ap, mixed / f"{kind}{ap.suffix}")
    (mixed / "README.txt").write_text("not data: ignored")
    csvd = root / "csv"
    (csvd / "img").mkdir(parents=True)
    (csvd / "snd").mkdir()
    rows = []
    for n, (kind, ip) in enumerate(sorted(src_i.items())[:6]):
        ap = audios[n % len(audios)]
        os.link(ip, csvd / "img" / ip.name)
        os.link(ap, csvd / "snd" / f"{n}{ap.suffix}")
        rows.append({"image": f"img/{ip.name}", "audio": f"snd/{n}{ap.suffix}", "label": "ab"[n % 2]})
    _write_csv(csvd / "pairs.csv", rows)
    return root, src_i, src_a


def _write_csv(path: Path, rows: list[dict], fields=("image", "audio", "label")) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)


# ------------------------------------------------------------------------------------------- dataset
def test_folder_layout_with_all_odd_files(odd_root):
    root, imgs, _ = odd_root
    ds = PairDataset(root, "mixed", S, train=False)
    assert len(ds) == len(imgs) and ds.skipped == [] and ds.classes == []
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, S, S)
        assert item["audio"].shape == (16000,) and item["audio"].dtype == torch.float32
        assert item["label"].item() == -1 and item["index"].item() == i
    assert "0 skipped" in ds.report()


def test_csv_layout_labels(odd_root):
    root, _, _ = odd_root
    ds = PairDataset(root, "csv", S, train=True, cache="none")
    assert len(ds) == 6 and ds.classes == ["a", "b"]
    assert ds.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert ds[3]["label"].item() == 1


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_file_raises_or_is_skipped(tmp_path, case):
    bad = make_bad_case(tmp_path / "split", case)
    with pytest.raises(BadFileError) as ei:
        PairDataset(tmp_path, "split", S, train=True)
    assert bad.name in str(ei.value)
    ds = PairDataset(tmp_path, "split", S, train=True, skip_bad=True)
    assert len(ds) == 1 and ds.pairs[0].image.name == "ok.png"
    assert len(ds.skipped) == 1 and ds.skipped[0][0].name == bad.name
    rep = ds.report()
    assert "1 pairs, 1 skipped" in rep and bad.name in rep
    ds[0]


def test_truncated_audio_found_at_construction_or_named_when_lazy(tmp_path):
    bad = make_bad_case(tmp_path / "split", "truncated_flac")
    scan_pairs(tmp_path / "split")  # header looks fine
    with pytest.raises(BadFileError, match="bad.flac"):
        PairDataset(tmp_path, "split", S, train=False, cache="auto")
    lazy = PairDataset(tmp_path, "split", S, train=False, cache="none")
    idx = [p.audio for p in lazy.pairs].index(bad)
    with pytest.raises(BadFileError, match="decoding failed") as ei:
        lazy[idx]
    assert ei.value.path == bad


def test_csv_missing_file_and_missing_column(tmp_path):
    d = tmp_path / "val"
    good_pair(d, "ok")
    _write_csv(d / "pairs.csv", [{"image": "ok.png", "audio": "ok.wav", "label": "l"},
                                 {"image": "ok.png", "audio": "gone.wav", "label": "l"}])
    with pytest.raises(BadFileError, match="gone.wav.*does not exist"):
        PairDataset(tmp_path, "val", S, train=False)
    ds = PairDataset(tmp_path, "val", S, train=False, skip_bad=True)
    assert len(ds) == 1 and "line 3" in ds.skipped[0][1]
    _write_csv(d / "pairs.csv", [{"img": "ok.png", "audio": "ok.wav"}], fields=("img", "audio"))
    with pytest.raises(BadFileError, match=r"lacks column.*\['image'\]"):
        PairDataset(tmp_path, "val", S, train=False, skip_bad=True)


def test_missing_split_and_empty_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="nosplit"):
        PairDataset(tmp_path, "nosplit", S, train=False)
    make_bad_case(tmp_path / "onlybad", "audio_without_image")
    (tmp_path / "onlybad" / "ok.png").unlink()
    (tmp_path / "onlybad" / "ok.wav").unlink()
    with pytest.raises(ValueError, match="no usable pairs"):
        PairDataset(tmp_path, "onlybad", S, train=False, skip_bad=True)


# ------------------------------------------------------------------------------------------- crops
@pytest.fixture()
def long_split(tmp_path):
    """6 pairs of 3 s white noise at 16 kHz (every crop position differs)."""
    d = tmp_path / "train"
    d.mkdir()
    for k in range(6):
        rgb_image(seed=k).save(d / f"x{k}.png")
        noise = np.random.default_rng(k).uniform(-0.5, 0.5, 16000 * 3).astype(np.float32)
        sf.write(str(d / f"x{k}.wav"), noise, 16000)
    return tmp_path


def test_crops_train_random_per_epoch_eval_center(long_split):
    tr = PairDataset(long_split, "train", S, train=True, seed=3)
    a0, a0b, a1 = tr[(2, 0)]["audio"], tr[(2, 0)]["audio"], tr[(2, 1)]["audio"]
    assert torch.equal(a0, a0b) and not torch.equal(a0, a1)
    tr2 = PairDataset(long_split, "train", S, train=True, seed=3, cache="none")
    assert torch.equal(tr2[(2, 0)]["audio"], a0)                 # reproducible across instances/cache modes
    ev = PairDataset(long_split, "train", S, train=False)
    full = ev._decode(2)[1]
    assert torch.equal(ev[(2, 0)]["audio"], ev[(2, 5)]["audio"])  # eval ignores the epoch
    np.testing.assert_array_equal(ev[2]["audio"].numpy(), full[16000:32000])  # centre of 3 s


def test_short_clip_is_zero_padded(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    rgb_image().save(d / "a.png")
    write_audio(d / "a.wav", 0.1, 16000)
    for train in (True, False):
        a = PairDataset(tmp_path, "s", S, train=train)[0]["audio"]
        assert a.shape == (16000,) and a[:1600].abs().sum() > 0 and (a[1700:] == 0).all()


def test_audio_features_mode(long_split):
    base = PairDataset(long_split, "train", S, train=True)
    feats = {str(p.audio.resolve()): torch.full((512,), float(i)) for i, p in enumerate(base.pairs)}
    ds = PairDataset(long_split, "train", S, train=True, audio_features=feats)
    assert torch.equal(ds[4]["audio"], torch.full((512,), 4.0))
    del feats[str(base.pairs[1].audio.resolve())]
    with pytest.raises(BadFileError, match="precomputed audio feature"):
        PairDataset(long_split, "train", S, train=True, audio_features=feats)
    assert len(PairDataset(long_split, "train", S, train=True, audio_features=feats, skip_bad=True)) == 5


# ------------------------------------------------------------------------------------------- loader
def _epochs(loader, n):
    out = []
    for e in range(n):
        loader.sampler.set_epoch(e)
        out.append([(b["index"].tolist(), b["audio"].clone()) for b in loader])
    return out


def test_loader_workers_match_single_process(long_split):
    ds = PairDataset(long_split, "train", S, train=True, seed=1)
    ref = _epochs(make_loader(ds, 4, shuffle=True, num_workers=0, seed=5), 2)
    par = _epochs(make_loader(ds, 4, shuffle=True, num_workers=2, seed=5), 2)
    for (ia, aa), (ib, ab) in zip(sum(ref, []), sum(par, [])):
        assert ia == ib and torch.equal(aa, ab)
    assert [i for i, _ in ref[0]] != [i for i, _ in ref[1]]  # reshuffled per epoch
    b = next(iter(make_loader(ds, 4, shuffle=False)))
    assert b["image"].shape == (4, 3, S, S) and b["audio"].shape == (4, 16000) and b["label"].shape == (4,)


def test_collate_pairs_matches_default_collate(long_split):
    from torch.utils.data import default_collate

    from ciap_lib.data import collate_pairs
    ds = PairDataset(long_split, "train", S, train=True)
    items = [ds[(i, 0)] for i in range(4)]
    a, b = collate_pairs(items), default_collate(items)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_epoch_sampler_auto_advances():
    s = EpochSampler(5, shuffle=True, seed=0)
    e0, e1 = list(s), list(s)
    assert {e for _, e in e0} == {0} and {e for _, e in e1} == {1}
    s.set_epoch(0)
    assert list(s) == e0
    assert [i for i, _ in EpochSampler(4, shuffle=False)] == [0, 1, 2, 3]


def test_cache_modes_give_the_same_crops(tmp_path):
    """preload (whole clips in memory), lazy (long clips read by seeking) and none agree."""
    d = tmp_path / "t"
    d.mkdir()
    for k, (sec, sr, ext) in enumerate([(6.0, 44100, ".flac"), (3.0, 16000, ".wav"), (0.5, 8000, ".wav"),
                                        (5.0, 48000, ".ogg"), (2.0, 22050, ".mp3")]):
        rgb_image(seed=k).save(d / f"c{k}.png")
        write_audio(d / f"c{k}{ext}", sec, sr, 2)
    sets = {m: PairDataset(tmp_path, "t", S, train=True, cache=m, seed=4) for m in ("preload", "lazy", "none")}
    assert sets["preload"].cache_mode == "preload"
    for i in range(5):
        for epoch in (0, 1):
            ref = sets["preload"][(i, epoch)]
            for m in ("lazy", "none"):
                got = sets[m][(i, epoch)]
                assert torch.equal(got["image"], ref["image"])
                torch.testing.assert_close(got["audio"], ref["audio"], atol=1e-4, rtol=0)
    # lazy keeps short clips and non-seekable formats (ogg, mp3) in memory, reads long wav/flac by seeking
    assert sorted(sets["lazy"]._audio) == [1, 2, 3, 4] and len(sets["none"]._audio) == 0


def test_auto_cache_respects_budget(long_split):
    small = PairDataset(long_split, "train", S, train=True, cache="auto", cache_max_bytes=10 ** 4)
    assert small.cache_mode == "lazy" and small._cached_bytes <= 10 ** 4
    big = PairDataset(long_split, "train", S, train=True, cache="auto")
    assert big.cache_mode == "preload" and len(big._audio) == len(big) == 6
    assert big.estimated_bytes() == 6 * (S * S * 3 + 4 * 48000)


# ------------------------------------------------------------------------------------------- augmentation
def _augs():
    from ciap_lib.augment import AudioAugment, ImageAugment

    return dict(audio_augment=AudioAugment(["gain", "shift", "noise", "speed"]),
                image_augment=ImageAugment(["crop", "affine", "jitter"]))


def test_augmentation_is_off_in_evaluation(long_split):
    plain = PairDataset(long_split, "train", S, train=False)
    aug = PairDataset(long_split, "train", S, train=False, **_augs())
    assert aug.audio_augment is None and aug.image_augment is None
    for i in range(len(plain)):
        for epoch in (0, 3):
            a, b = plain[(i, epoch)], aug[(i, epoch)]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["audio"], b["audio"])


def test_augmentation_is_seeded_by_seed_epoch_and_index(long_split):
    tr = PairDataset(long_split, "train", S, train=True, seed=3, **_augs())
    again = PairDataset(long_split, "train", S, train=True, seed=3, cache="none", **_augs())
    plain = PairDataset(long_split, "train", S, train=True, seed=3)
    a0 = tr[(2, 0)]
    for other in (tr[(2, 0)], again[(2, 0)]):  # same item, epoch and seed: same result, any cache mode
        assert torch.equal(a0["image"], other["image"])
        torch.testing.assert_close(a0["audio"], other["audio"], atol=1e-6, rtol=0)
    a1, p0 = tr[(2, 1)], plain[(2, 0)]
    assert not torch.equal(a0["image"], a1["image"]) and not torch.equal(a0["audio"], a1["audio"])
    assert not torch.equal(a0["image"], p0["image"]) and not torch.equal(a0["audio"], p0["audio"])
    other_seed = PairDataset(long_split, "train", S, train=True, seed=4, **_augs())[(2, 0)]
    assert not torch.equal(a0["image"], other_seed["image"])
    # image augmentation alone leaves the audio crop as it was (separate random streams)
    from ciap_lib.augment import ImageAugment
    img_only = PairDataset(long_split, "train", S, train=True, seed=3, image_augment=ImageAugment(["crop"]))
    assert torch.equal(img_only[(2, 0)]["audio"], p0["audio"])
    assert not torch.equal(img_only[(2, 0)]["image"], p0["image"])


def test_augmented_loader_workers_match_single_process(long_split):
    ds = PairDataset(long_split, "train", S, train=True, seed=1, **_augs())
    refs = list(make_loader(ds, 2, shuffle=True, num_workers=0, seed=5))
    pars = list(make_loader(ds, 2, shuffle=True, num_workers=2, seed=5))   # 3 batches from both workers
    assert len(refs) == len(pars) == 3
    for ref, par in zip(refs, pars):
        assert torch.equal(ref["index"], par["index"]) and torch.equal(ref["image"], par["image"])
        assert torch.equal(ref["audio"], par["audio"])


def test_cached_features_cannot_be_augmented(long_split):
    base = PairDataset(long_split, "train", S, train=True)
    feats = {str(p.audio.resolve()): torch.zeros(512) for p in base.pairs}
    with pytest.raises(ValueError, match="audio augmentation.*precomputed audio features"):
        PairDataset(long_split, "train", S, train=True, audio_features=feats, audio_augment=_augs()["audio_augment"])
    ifeats = {str(p.image.resolve()): torch.zeros(8) for p in base.pairs}
    with pytest.raises(ValueError, match="image augmentation.*cached image features"):
        PairDataset(long_split, "train", S, train=True, image_features=ifeats, image_augment=_augs()["image_augment"])
