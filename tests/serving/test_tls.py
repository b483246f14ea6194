"""gRPC over TLS: the server's --ssl_config_file (TensorFlow Serving's SSLConfig) and the client's tls=True."""

import os
import re
import shutil
import subprocess

import pytest

from serving.client import GrpcClient
from serving.client import ServingError
from serving.tls import parse_ssl_config
from tests.serving.conftest import ServerProcess


def _escaped(path):
    with open(path) as f:
        return f.read().replace("\n", "\\n")


def test_ssl_config_parses_like_tensorflow_serving():
    config = parse_ssl_config('server_key: "KEY\\nLINE"\nserver_cert: "CERT"\nclient_verify: false\n')
    assert config == {"server_key": "KEY\nLINE", "server_cert": "CERT", "custom_ca": "", "client_verify": False}
    with pytest.raises(ValueError, match='no field named "server_keys"'):
        parse_ssl_config('server_keys: "x"')
    with pytest.raises(ValueError, match="server_key and server_cert are required"):
        parse_ssl_config('server_cert: "x"')


@pytest.mark.parametrize("text, reason", [
    ('server_key: "K"\nserver_cert: "C"\nserver_cert "C2"', r'line 3, column 13: Expected ":"'),
    ('server_key: "K"\nserver_cert: "C"\nclient_verify: yes', r'line 3, column 16: Expected "true" or "false"'),
    ('server_key: "K"\nserver_cert: "C"\nserver_key: "K2"', r'should not have multiple "server_key" fields'),
    ('server_key: "K"\nserver_cert: "C"\n}', r"line 3, column 1: Expected identifier or number, got }"),
    ('server_key: "K" server_cert: C', r"line 1, column 30: Expected string"),
])
def test_malformed_ssl_config_lines_fail_naming_the_fault(text, reason):
    # TensorFlow Serving parses the file with protobuf's text-format parser
    # (model_servers/server.cc, BuildServerCredentialsFromSSLConfigFile ->
    # ParseProtoTextFile; the message in config/ssl_config.proto): a line it
    # cannot read fails the start, it is never skipped.
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_ssl_config(text)


def test_an_ssl_config_error_never_quotes_the_key():
    key = "-----BEGIN PRIVATE KEY-----\\nMIIEsecretsecret"
    # Protobuf's reason quotes the text in many forms; each form is here: the
    # line, a token, an unquoted word read as a field name, a string in
    # single or double quotes, a string's repr, a bad escape.
    texts = [
        f'server_key: "{key}\nserver_cert: "C"', f"server_key: {key}", f'server_key: "{key}" bad',
        'server_key: "K"\nMIIEsecretsecret: 1', "server_key: 'MIIEsecretsecret", "server_key: 'ab' MIIEsecretsecret",
        'server_key: "ab"\n"MIIEsecretsecret": 1', 'client_verify: MIIEsecretsecret', 'server_key: [MIIEsecretsecret]',
        'server_key: 1MIIEsecretsecret', 'server_key { MIIEsecretsecret }', 'server_key: "\\xMIIEsecretsecret"',
        'server_key: "K" server_cert: MIIEsecretsecret',
    ]
    for text in texts:
        with pytest.raises(ValueError) as error:
            parse_ssl_config(text)
        assert "secret" not in str(error.value) and re.search(r"line \d, column \d+: \w", str(error.value)), error.value


def test_client_verify_without_a_custom_ca_is_refused_clearly():
    # gRPC's Python server cannot verify clients without the CA that signs
    # their certificates (TF Serving's C++ gRPC would fall back to the system
    # roots, model_servers/server.cc): say so instead of failing later in
    # grpc.ssl_server_credentials.
    with pytest.raises(ValueError, match="client_verify.*custom_ca"):
        parse_ssl_config('server_key: "K"\nserver_cert: "C"\nclient_verify: true')


def test_translate_over_tls(lean_exports, tmp_path):
    base, _, _ = lean_exports
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )
    config = tmp_path / "ssl.config"
    config.write_text(f'server_key: "{_escaped(key)}"\nserver_cert: "{_escaped(cert)}"\nclient_verify: false\n')
    served = tmp_path / "models"
    shutil.copytree(os.path.join(base, "1"), served / "1")
    server = ServerProcess(str(served), f"--ssl_config_file={config}")
    try:
        with GrpcClient(server.address, "toy", tls=True, root_certificates=cert.read_bytes()) as client:
            texts, _ = client.translate(["A man rides a bike."])
            assert len(texts) == 1 and client.status()[0]["state"] == "AVAILABLE"
        with pytest.raises(ServingError, match="UNAVAILABLE"):
            GrpcClient(server.address, "toy", retries=0, timeout=10).translate(["A man."])  # plaintext refused
    finally:
        server.stop()
