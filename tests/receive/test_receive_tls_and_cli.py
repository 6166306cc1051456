"""DICOM TLS with DCMTK's +tls, and the ``contourd serve`` command end to end."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from receive_helpers import (
    REPO_ROOT,
    echoscu,
    free_port,
    make_ct_series,
    require_tool,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.interop


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    require_tool("openssl", "openssl")
    folder = tmp_path / "pki"
    folder.mkdir()
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=contourd test CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=folder,
    )  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt",
            cwd=folder,
        )  # fmt: skip
    return folder


def test_tls_push_with_client_certificate_is_stored_and_plain_tcp_is_not(
    start_node, tmp_path, certificates
):
    pki = certificates
    node, completions = start_node(
        node={
            "tls": {
                "cert_file": str(pki / "server.crt"),
                "key_file": str(pki / "server.key"),
                "ca_file": str(pki / "ca.crt"),
                "require_client_cert": True,
            }
        },
        series={"complete_after_s": 0.5},
    )
    tls_args = [
        "+tls",
        str(pki / "client.key"),
        str(pki / "client.crt"),
        "+cf",
        str(pki / "ca.crt"),
    ]
    files = make_ct_series(tmp_path / "in", 3)
    result = storescu(node.port, files, extra_args=tls_args)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Received Store Response (Success)") == 3
    wait_for(lambda: completions.items, 10, "completion of the TLS push")
    assert completions.items[0].num_instances == 3

    plain = echoscu(node.port, extra_args=["-to", "5", "-ta", "5"])
    assert plain.returncode != 0
    no_client_cert = echoscu(node.port, extra_args=["+tla", "+cf", str(pki / "ca.crt")])
    assert no_client_cert.returncode != 0


def test_contourd_serve_receives_a_push_and_stops_on_sigterm(tmp_path):
    require_tool("storescu", "dcmtk")
    config = {
        "node": {
            "host": "127.0.0.1",
            "port": free_port(),
            "data_dir": "var",
            "min_free_disk_mb": 0,
        },
        "series": {"complete_after_s": 0.5},
    }
    config_path = tmp_path / "contourd.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "serve.log"
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "serve", "-c", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        try:
            wait_for(lambda: "listening on port" in log_path.read_text(), 30, "serve start")
            files = make_ct_series(tmp_path / "in", 2)
            result = storescu(config["node"]["port"], files)
            assert result.returncode == 0, result.stderr
            wait_for(lambda: "series ready:" in log_path.read_text(), 10, "completion log line")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    text = log_path.read_text()
    assert "SYNTHETIC" not in text and "SYN0001" not in text  # no patient name or ID in logs
    assert (tmp_path / "var" / "contourd.db").is_file()
    assert (tmp_path / "var" / "logs" / "contourd.log").is_file()
