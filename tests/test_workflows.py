"""workflows: fit / evaluate_checkpoint dispatch — core for waveform encoders, the bridge for 'clap'."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ciap_lib.config import load_config
from ciap_lib.synthetic import make_synthetic_dataset
from ciap_lib.workflows import evaluate_checkpoint, fit, resolve_split, resolved_audio_encoder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("wf") / "syn", n_train=16, n_val=8, image_size=32)


def test_resolved_audio_encoder():
    assert resolved_audio_encoder(load_config(None, model="clap_aligned")) == "clap"
    assert resolved_audio_encoder(load_config(None, model="clap_aligned", audio_encoder="mlp")) == "mlp"
    assert resolved_audio_encoder(load_config(None, model="seed")) == "mlp"


def test_waveform_modes_stay_in_core(data, tmp_path):
    cfg = load_config(None, data=str(data), model="debug", epochs=1, batch_size=8, num_workers=0,
                      ckpt_dir=str(tmp_path / "ckpt"))
    result = fit(cfg)
    metrics = evaluate_checkpoint(result.checkpoint)  # data defaults to the training data
    assert metrics["val_loss"] == pytest.approx(result.metrics["val_loss"], abs=1e-5)
    assert resolve_split(data, "val") == (data, "val") and resolve_split(data / "val", "val") == (data / "val", None)


# ------------------------------------------------------------------------------------------------ layers
#: the layer of each module, by name prefix (longest match wins); every other module of ciap_lib is core
LAYERS = {"ciap_lib.bridge": "bridge", "ciap_lib.tracking": "tracking", "ciap_lib.cli": "entry",
          "ciap_lib.pipeline": "entry", "ciap_lib.workflows": "entry", "ciap_lib.__main__": "entry",
          "ciap_lib.ui": "entry"}
#: which layers may import which (imports run downward only)
MAY_IMPORT = {"core": {"core"}, "bridge": {"core", "bridge"}, "tracking": {"core", "tracking"},
              "entry": {"core", "bridge", "tracking", "entry"}}
#: the only layer that may import each of these libraries (at module level or inside a function)
OWNERS = {"audioldm": "bridge", "diffusers": "bridge", "mlflow": "tracking"}


def _modules() -> dict[str, Path]:
    import ciap_lib

    root = Path(ciap_lib.__file__).parent
    out = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _layer(module: str) -> str:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    return LAYERS[best] if best else "core"


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, anywhere in it (relative imports resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join(pkg + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def test_imports_run_downward_and_only_the_owners_import_audioldm_diffusers_mlflow():
    modules = _modules()
    assert len(modules) > 40 and "ciap_lib.bridge.generate" in modules and "ciap_lib.pairs" in modules
    bad = []
    for module, path in sorted(modules.items()):
        layer = _layer(module)
        for name in sorted(_imports(path, module)):
            top = name.split(".")[0]
            if top in OWNERS and layer != OWNERS[top]:
                bad.append(f"{module} ({layer}) imports {name}: only the {OWNERS[top]} layer may")
            if top == "ciap_lib" and name in modules and _layer(name) not in MAY_IMPORT[layer]:
                bad.append(f"{module} ({layer}) imports {name} ({_layer(name)}): imports run downward only")
    assert not bad, "\n".join(bad)


def test_the_layer_check_catches_a_violation(tmp_path):
    """The walk above finds a lazy import inside a function of a core module."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import mlflow\n    from ciap_lib.bridge import generate\n")
    assert {"mlflow", "ciap_lib.bridge", "ciap_lib.bridge.generate"} <= _imports(f, "ciap_lib.m")


def test_importing_core_loads_none_of_the_upper_libraries():
    core = sorted(m for m in _modules() if _layer(m) == "core" and not m.endswith("__main__"))
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {core!r}]; "
            "bad = [m for m in ('audioldm', 'diffusers', 'mlflow', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_clap_mode_goes_through_the_bridge(data, tmp_path, tiny_audioldm_ckpt, tiny_audioldm):
    cfg = load_config(None, data=str(data), model="debug", audio_encoder="clap", epochs=1, batch_size=8,
                      num_workers=0, ckpt_dir=str(tmp_path / "ckpt"), audioldm=str(tiny_audioldm_ckpt),
                      clap_cache_dir=str(tmp_path / "clap"))
    result = fit(cfg)
    assert any((tmp_path / "clap").rglob("*")), "CLAP features were cached by the bridge"
    metrics = evaluate_checkpoint(result.checkpoint, data, audioldm=tiny_audioldm)  # same weights, loaded once
    assert metrics["val_loss"] == pytest.approx(result.metrics["val_loss"], abs=1e-4)
    assert metrics["n_pairs"] == 8
    # a clip whose header reads but whose audio does not decode: named, or skipped with skip_bad
    from fixtures.odd_files import good_pair, make_bad_case

    from ciap_lib.audio_io import BadFileError

    bad = make_bad_case(tmp_path / "odd" / "val", "truncated_flac")
    for stem in ("ok2", "ok3"):
        good_pair(tmp_path / "odd" / "val", stem)
    with pytest.raises(BadFileError, match="bad.flac"):
        evaluate_checkpoint(result.checkpoint, tmp_path / "odd", audioldm=tiny_audioldm)
    metrics = evaluate_checkpoint(result.checkpoint, tmp_path / "odd", audioldm=tiny_audioldm, skip_bad=True)
    assert metrics["n_pairs"] == 3 and bad.name == "bad.flac"


# ------------------------------------------------------------------------------------------------ preprocessing
def test_load_eval_split_prepares_images_as_the_checkpoint_stores(data, tmp_path):
    import torch

    from fixtures.preprocess import STORED, stored_preprocess_checkpoint

    from ciap_lib.images import ImagePreprocess, load_image
    from ciap_lib.workflows import load_eval_split

    ev = load_eval_split(stored_preprocess_checkpoint(tmp_path, data))
    assert ev.model.preprocess == STORED and ev.dataset.preprocess == STORED  # stored values round-trip
    assert ImagePreprocess.from_dict(ev.model.config.image_preprocess) == STORED
    item = ev.dataset[0]["image"]
    path = ev.dataset.pairs[0].image
    assert torch.equal(item, load_image(path, STORED))
    assert not torch.allclose(item, load_image(path, 32), atol=0.05)  # not ImageNet's normalization and crop
