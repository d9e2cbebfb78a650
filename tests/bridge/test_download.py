"""Downloads from a local HTTP server on 127.0.0.1 (never the internet): complete -> in place with a
SHA-256 sidecar; truncated or corrupt -> nothing at the final path."""
from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from ciap_lib.bridge.download import DownloadError, checkpoint_url, download_checkpoint
from ciap_lib.bridge.checkpoint_io import read_sidecar
from fixtures.crafted import crafted_file


@pytest.fixture
def server(tmp_path):
    """Serves files from ``tmp_path/www``; ``/truncated/<f>`` announces the full size but sends half."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):  # noqa: N802
            truncated = self.path.startswith("/truncated/")
            f = root / self.path.split("/")[-1]
            if not f.is_file():
                self.send_error(404)
                return
            data = f.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if truncated else data)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _small_real_format(path: Path) -> bytes:
    torch.save({"epoch": 0, "state_dict": {"model.w": torch.randn(64, 64)}}, path)
    return path.read_bytes()


def test_complete_download_lands_with_sha(server, tmp_path):
    root, base = server
    data = _small_real_format(root / "good.ckpt")
    final = download_checkpoint("audioldm-s-full", tmp_path / "ckpt", url=f"{base}/good.ckpt", progress=False)
    assert final == tmp_path / "ckpt" / "audioldm-s-full.ckpt"
    assert final.read_bytes() == data
    assert read_sidecar(final) == hashlib.sha256(data).hexdigest()
    assert not final.with_name(final.name + ".part").exists()


def test_truncated_download_never_lands(server, tmp_path):
    root, base = server
    _small_real_format(root / "good.ckpt")
    with pytest.raises(DownloadError, match="incomplete|failed"):
        download_checkpoint("audioldm-s-full", tmp_path / "ckpt", url=f"{base}/truncated/good.ckpt", progress=False)
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_corrupt_download_never_lands(server, tmp_path):
    root, base = server
    (root / "junk.ckpt").write_bytes(b"<html>rate limited</html>" * 100)
    with pytest.raises(DownloadError, match="does not open"):
        download_checkpoint("audioldm-s-full", tmp_path / "ckpt", url=f"{base}/junk.ckpt", progress=False)
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_cli_download_and_urls(server, tmp_path, capsys):
    from ciap_lib.cli import main

    root, base = server
    _small_real_format(root / "good.ckpt")
    assert main(["download", "audioldm-m-full", "--ckpt-dir", str(tmp_path), "--url", f"{base}/good.ckpt"]) == 0
    assert (tmp_path / "audioldm-m-full.ckpt").is_file()
    assert main(["download", "audioldm-s-full", "--ckpt-dir", str(tmp_path), "--url", f"{base}/nope.ckpt"]) == 1
    assert "error" in capsys.readouterr().err
    assert checkpoint_url("audioldm-s-full").startswith("https://zenodo.org/")
    with pytest.raises(ValueError):
        checkpoint_url("audioldm-xl")


def test_crafted_download_is_refused_and_never_lands(server, tmp_path):
    root, base = server
    marker = tmp_path / "pwned"
    crafted_file(root / "evil.ckpt", marker)
    with pytest.raises(DownloadError) as e:
        download_checkpoint("audioldm-s-full", tmp_path / "ckpt", url=f"{base}/evil.ckpt", progress=False)
    assert not marker.exists()
    msg = str(e.value)
    assert f"{base}/evil.ckpt" in msg and "refused" in msg and "io.open" in msg and "--trust-checkpoint" in msg
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_cli_trust_checkpoint_lets_a_refused_download_land(server, tmp_path, capsys):
    from ciap_lib.cli import main

    root, base = server
    torch.save({"state_dict": {"model.w": torch.ones(2)}, "extra": np.arange(3)}, root / "numpy.ckpt")
    args = ["download", "audioldm-s-full", "--ckpt-dir", str(tmp_path), "--url", f"{base}/numpy.ckpt"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "numpy." in err and "Traceback" not in err
    assert not (tmp_path / "audioldm-s-full.ckpt").exists()
    assert main(args + ["--trust-checkpoint"]) == 0
    assert (tmp_path / "audioldm-s-full.ckpt").read_bytes() == (root / "numpy.ckpt").read_bytes()
