"""Training loop: end-to-end learning on the synthetic set, resume == uninterrupted, callbacks, clap features,
best.pt selection, early stopping, the label-aware loss, the label-word loss."""
import math

import pytest
import torch

from ciap_lib.checkpoint import load_checkpoint, load_ciap
from ciap_lib.config import load_config
from ciap_lib.data import PairDataset
from ciap_lib.pairs import scan_pairs
from ciap_lib.synthetic import make_synthetic_dataset
from ciap_lib.callbacks import Callback
from ciap_lib import train as train_module
from ciap_lib.train import evaluate, train


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "small", n_train=48, n_val=16, image_size=32)


class Recorder(Callback):
    def __init__(self, stop_after: int | None = None):
        self.calls, self.stop_after = [], stop_after

    def on_train_start(self, cfg, model):
        self.calls.append(("start", cfg.run_name))

    def on_epoch_end(self, epoch, metrics, checkpoint):
        self.calls.append(("epoch", epoch, dict(metrics), checkpoint))
        if epoch == self.stop_after:
            raise KeyboardInterrupt  # the process dies right after the epoch's checkpoint

    def on_train_end(self, result):
        self.calls.append(("end", result))


def _cfg(data, tmp_path, **kw):
    base = dict(data=str(data), model="debug", batch_size=16, epochs=3, num_workers=0, seed=3,
                ckpt_dir=str(tmp_path / "ckpt"), lr_step_size=2, lr_gamma=0.5)
    base.update(kw)
    return load_config(None, **base)


AUGMENT = dict(augment_audio="gain,shift,noise,speed,specaugment", augment_image="crop,affine,jitter")


#: the default recipe's image-side parts: the label-word loss alone trains the backbone, a head on normalised features
WORDS = dict(loss="infonce_labels", word_weight=1.0, backbone_loss="words", head="normed_linear")


@pytest.mark.parametrize("aug", [{}, AUGMENT, WORDS], ids=["plain", "augmented", "label-words"])
def test_resume_equals_uninterrupted_run(small_data, tmp_path, aug):
    full = train(_cfg(small_data, tmp_path, run_name="full", **aug))
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(small_data, tmp_path, run_name="cut", **aug), [Recorder(stop_after=2)])
    assert load_checkpoint(tmp_path / "ckpt" / "cut" / "last.pt")["epoch"] == 2
    rec = Recorder()
    resumed = train(_cfg(small_data, tmp_path, run_name="cut", resume=True, **aug), [rec])
    assert [c[1] for c in rec.calls if c[0] == "epoch"] == [3]  # only the missing epoch ran
    a = load_checkpoint(full.checkpoint)
    b = load_checkpoint(resumed.checkpoint)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert resumed.history == full.history
    assert b["scheduler"]["last_epoch"] == 3 and resumed.history[-1]["lr"] == 0.5e-3


def test_augmentation_changes_training_but_not_validation(small_data, tmp_path):
    """Augmented training takes other steps; the model it saves has the same keys, and evaluation is unaugmented."""
    plain = train(_cfg(small_data, tmp_path, run_name="plain", epochs=1))
    aug = train(_cfg(small_data, tmp_path, run_name="aug", epochs=1, **AUGMENT))
    assert aug.history[0]["train_loss"] != plain.history[0]["train_loss"]
    a, b = load_checkpoint(plain.checkpoint), load_checkpoint(aug.checkpoint)
    assert a["model"].keys() == b["model"].keys()
    model, cfg = load_ciap(aug.checkpoint)  # the saved model's validation metrics, measured without augmentation
    again = evaluate(model, PairDataset(small_data, "val", 32, train=False), loss_batch_size=cfg.batch_size)
    assert again["val_loss"] == pytest.approx(aug.metrics["val_loss"], abs=1e-5)


def test_seeded_runs_are_reproducible_and_callbacks_fire(small_data, tmp_path):
    rec = Recorder()
    r1 = train(_cfg(small_data, tmp_path, run_name="a", epochs=2), [rec])
    r2 = train(_cfg(small_data, tmp_path, run_name="b", epochs=2))
    assert r1.history == r2.history
    kinds = [c[0] for c in rec.calls]
    assert kinds == ["start", "epoch", "epoch", "end"]
    _, epoch, metrics, ckpt = rec.calls[2]
    assert epoch == 2 and ckpt == r1.checkpoint and ckpt.is_file()
    for key in ("train_loss", "val_loss", "lr", "logit_scale", "i2a_R@1", "a2i_R@10", "i2a_median_rank",
                "i2a_class_R@1"):
        assert math.isfinite(metrics[key]), key
    assert (tmp_path / "ckpt" / "a" / "config.yaml").is_file()
    # the checkpoint reproduces the reported validation metrics
    model, cfg = load_ciap(r1.checkpoint)
    val = PairDataset(small_data, "val", 32, train=False)
    again = evaluate(model, val, loss_batch_size=cfg.batch_size)
    assert again["val_loss"] == pytest.approx(metrics["val_loss"], abs=1e-5)
    assert again["i2a_R@1"] == metrics["i2a_R@1"]


def test_precomputed_clap_features_train_the_image_tower(small_data, tmp_path):
    g = torch.Generator().manual_seed(0)
    feats = {}
    for split in ("train", "val"):
        for p in scan_pairs(small_data / split)[0]:
            feats[str(p.audio.resolve())] = torch.randn(512, generator=g)
    cfg = _cfg(small_data, tmp_path, run_name="clap", audio_encoder="clap", loss="cosine", epochs=2)
    result = train(cfg, audio_features=feats)
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    with pytest.raises(ValueError, match="precomputed CLAP features"):
        train(cfg)


def test_end_to_end_debug_beats_chance(tmp_path):
    data = make_synthetic_dataset(tmp_path / "syn", n_train=256, n_val=64, image_size=32)
    cfg = _cfg(data, tmp_path, run_name="e2e", batch_size=32, epochs=6, seed=0, lr_step_size=10,
               num_workers=1)
    m = train(cfg).metrics
    n = 64
    r1 = (m["i2a_R@1"] + m["a2i_R@1"]) / 2
    r5 = (m["i2a_R@5"] + m["a2i_R@5"]) / 2
    med = (m["i2a_median_rank"] + m["a2i_median_rank"]) / 2
    assert r1 >= 2.5 / n, m           # chance: 1/64
    assert r5 >= 2.5 * 5 / n, m       # chance: 5/64
    assert med <= 0.5 * (n + 1) / 2, m  # chance: ~32.5
    assert m["val_loss"] < math.log(32) - 0.2, m


def _best_epoch(history, metric, lower=False):
    values = [h[metric] for h in history]
    best = min(values) if lower else max(values)
    return values.index(best) + 1  # the first epoch reaching it: ties keep the earlier one


@pytest.mark.parametrize("select_metric", [None, "val_loss"])
def test_best_pt_holds_the_epoch_with_the_best_chosen_metric(small_data, tmp_path, select_metric):
    r = train(_cfg(small_data, tmp_path, run_name="best", epochs=4, select_metric=select_metric))
    metric = select_metric or "i2a_class_R@1"  # the synthetic val split has labels
    epoch = _best_epoch(r.history, metric, lower=metric == "val_loss")
    best_pt = tmp_path / "ckpt" / "best" / "best.pt"
    assert r.extra["best"] == {"epoch": epoch, "metric": metric, "value": r.history[epoch - 1][metric],
                               "path": str(best_pt)}
    assert r.extra["stopped_early"] is False and r.extra["stopped_epoch"] is None
    ck = load_checkpoint(best_pt)
    assert ck["epoch"] == epoch and ck["metrics"] == r.history[epoch - 1]
    assert load_checkpoint(r.checkpoint)["epoch"] == 4  # last.pt keeps being written


def _scripted(monkeypatch, values):
    """Training whose validation reports ``values`` (in turn, one per epoch) as i2a_R@1."""
    real = evaluate  # the module's own, not an earlier script
    todo = list(values)

    def scripted(*args, **kwargs):
        return {**real(*args, **kwargs), "i2a_R@1": todo.pop(0)}

    monkeypatch.setattr(train_module, "evaluate", scripted)


def test_patience_stops_early_and_best_pt_keeps_the_best_epoch(small_data, tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.2, 0.5, 0.5, 0.4, 0.9, 0.9])
    r = train(_cfg(small_data, tmp_path, run_name="stop", epochs=6, select_metric="i2a_R@1", patience=2))
    assert [h["i2a_R@1"] for h in r.history] == [0.2, 0.5, 0.5, 0.4]  # a tie is no improvement
    assert r.extra["stopped_early"] is True and r.extra["stopped_epoch"] == 4
    assert r.extra["best"]["epoch"] == 2 and r.extra["best"]["value"] == 0.5
    assert load_checkpoint(tmp_path / "ckpt" / "stop" / "best.pt")["epoch"] == 2
    assert load_checkpoint(r.checkpoint)["epoch"] == 4


def test_resume_keeps_a_better_best_pt(small_data, tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.3, 0.6, 0.1])
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(small_data, tmp_path, run_name="res", epochs=5, select_metric="i2a_R@1"),
              [Recorder(stop_after=3)])
    assert load_checkpoint(tmp_path / "ckpt" / "res" / "best.pt")["epoch"] == 2
    _scripted(monkeypatch, [0.5, 0.55])  # the resumed epochs 4 and 5 are worse than epoch 2
    r = train(_cfg(small_data, tmp_path, run_name="res", epochs=5, select_metric="i2a_R@1", resume=True))
    assert [h["i2a_R@1"] for h in r.history] == [0.3, 0.6, 0.1, 0.5, 0.55]
    assert r.extra["best"]["epoch"] == 2 and r.extra["best"]["value"] == 0.6
    ck = load_checkpoint(tmp_path / "ckpt" / "res" / "best.pt")
    assert ck["epoch"] == 2 and ck["metrics"]["i2a_R@1"] == 0.6


def test_select_metric_and_patience_are_validated(small_data, tmp_path):
    for kw, match in (({"select_metric": "accuracy"}, "select_metric.*not a validation metric"),
                      ({"patience": 0}, "patience.*positive integer")):
        with pytest.raises(ValueError, match=match):
            _cfg(small_data, tmp_path, **kw).check()
    _cfg(small_data, tmp_path, select_metric="a2i_median_rank", patience=1).check()


def test_label_aware_loss_trains(small_data, tmp_path):
    r = train(_cfg(small_data, tmp_path, run_name="lab", epochs=2, loss="infonce_labels"))
    assert all(math.isfinite(h["val_loss"]) and math.isfinite(h["i2a_class_R@1"]) for h in r.history)
    assert r.extra["best"]["metric"] == "i2a_class_R@1"


def test_label_word_loss_trains_the_backbone_alone_and_is_checkpointed(small_data, tmp_path):
    class KeepStart(Callback):
        def on_train_start(self, cfg, model):  # the weights before the first step
            self.start = {k: v.detach().clone() for k, v in model.state_dict().items()}

    keep = KeepStart()
    r = train(_cfg(small_data, tmp_path, run_name="words", epochs=2, **WORDS), [keep])
    ck = load_checkpoint(r.checkpoint)
    labels = {line.split(",")[2] for line in (small_data / "train" / "pairs.csv").read_text().splitlines()[1:]}
    vocab_size = len({w for label in labels for w in label.split("-")})
    assert ck["label_words"]["classifier.weight"].shape[0] == vocab_size
    backbone = [k for k, v in keep.start.items() if k.startswith("image_encoder.backbone.") and v.is_floating_point()]
    assert backbone and all(not torch.equal(keep.start[k], ck["model"][k]) for k in backbone)  # the word loss trained it
    # a run written without the word loss cannot be resumed with it: the classifier would start afresh
    train(_cfg(small_data, tmp_path, run_name="plain", epochs=1))
    with pytest.raises(ValueError, match="without the label-word loss"):
        train(_cfg(small_data, tmp_path, run_name="plain", epochs=2, resume=True, **WORDS))


def test_label_word_loss_needs_labels(tmp_path):
    data = make_synthetic_dataset(tmp_path / "syn", n_train=24, n_val=8, image_size=32)
    for split in ("train", "val"):  # drop the label column
        csv_path = data / split / "pairs.csv"
        lines = csv_path.read_text().splitlines()
        csv_path.write_text("\n".join(",".join(line.split(",")[:2]) for line in lines) + "\n")
    with pytest.raises(ValueError, match="needs labelled training pairs"):
        train(_cfg(data, tmp_path, run_name="nolab", epochs=1, batch_size=8, **WORDS))


def test_selectable_metrics_are_what_validation_computes():
    from ciap_lib.selection import lower_is_better, resolve_metric, selectable_metrics
    from ciap_lib.train import metrics_from_embeddings

    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=-1)
    labels = torch.tensor([0, 1, 2, -1] * 3)
    computed = metrics_from_embeddings(emb, emb, labels, 10.0, "infonce_labels", loss_batch_size=6)
    assert set(selectable_metrics()) == set(computed)
    assert [m for m in selectable_metrics() if lower_is_better(m)] == ["val_loss", "i2a_median_rank",
                                                                        "a2i_median_rank"]
    assert resolve_metric(None, has_labels=True) == "i2a_class_R@1"
    assert resolve_metric(None, has_labels=False) == "i2a_R@1"
    with pytest.raises(ValueError, match="needs labels"):
        resolve_metric("a2i_class_R@1", has_labels=False)


def test_a_fresh_run_drops_an_earlier_best_pt(small_data, tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.9, float("nan")])
    train(_cfg(small_data, tmp_path, run_name="again", epochs=1, select_metric="i2a_R@1"))
    best_pt = tmp_path / "ckpt" / "again" / "best.pt"
    assert best_pt.is_file()
    r = train(_cfg(small_data, tmp_path, run_name="again", epochs=1, select_metric="i2a_R@1"))  # NaN: never best
    assert not best_pt.exists() and r.extra["best"] == {"epoch": None, "metric": "i2a_R@1", "value": None,
                                                        "path": None}


def test_resume_repairs_a_best_pt_that_does_not_hold_the_best_epoch(small_data, tmp_path, monkeypatch):
    import shutil

    _scripted(monkeypatch, [0.3, 0.6, 0.1])
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(small_data, tmp_path, run_name="fix", epochs=5, select_metric="i2a_R@1"),
              [Recorder(stop_after=2)])
    run = tmp_path / "ckpt" / "fix"
    assert load_checkpoint(run / "best.pt")["epoch"] == 2
    # as if the run had stopped after writing last.pt (epoch 2) but before copying it: best.pt holds epoch 1
    _scripted(monkeypatch, [0.3])
    train(_cfg(small_data, tmp_path, run_name="old1", epochs=1, select_metric="i2a_R@1"))
    shutil.copyfile(tmp_path / "ckpt" / "old1" / "last.pt", run / "best.pt")
    _scripted(monkeypatch, [0.1, 0.2, 0.25])
    r = train(_cfg(small_data, tmp_path, run_name="fix", epochs=5, select_metric="i2a_R@1", resume=True))
    assert r.extra["best"]["epoch"] == 2 and load_checkpoint(run / "best.pt")["epoch"] == 2
    # select_metric changed on resume: the best epoch by the new metric (val_loss) was never copied
    r = train(_cfg(small_data, tmp_path, run_name="fix", epochs=5, select_metric="val_loss", resume=True))
    by_loss = _best_epoch(r.history, "val_loss", lower=True)
    if by_loss != 2 and by_loss != 5:
        assert not (run / "best.pt").exists() and r.extra["best"]["path"] is None
    else:
        assert load_checkpoint(run / "best.pt")["epoch"] == by_loss


def test_resuming_a_finished_run_is_not_an_early_stop(small_data, tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.6, 0.1, 0.1])
    train(_cfg(small_data, tmp_path, run_name="done", epochs=3, select_metric="i2a_R@1"))
    r = train(_cfg(small_data, tmp_path, run_name="done", epochs=3, select_metric="i2a_R@1", patience=1,
                   resume=True))
    assert r.extra["stopped_early"] is False and len(r.history) == 3
