"""TensorFlow Serving's --ssl_config_file (SSLConfig in protobuf text format)."""

from serving.protos import parse_text


def parse_ssl_config(text: str) -> dict:
    """TensorFlow Serving's --ssl_config_file (SSLConfig, protobuf text format).

    Fields: server_key, server_cert, custom_ca (PEM strings, newlines
    escaped as \\n) and client_verify (true/false).

    Raises:
        ValueError: text that does not parse (named by line and column), a
            missing key or certificate, or client_verify without custom_ca.
    """
    message = parse_text("SSLConfig", text, "ssl config", secret=True)
    config = {
        "server_key": message.server_key, "server_cert": message.server_cert, "custom_ca": message.custom_ca,
        "client_verify": message.client_verify,
    }
    if not (config["server_key"] and config["server_cert"]):
        raise ValueError("ssl config: server_key and server_cert are required")
    if config["client_verify"] and not config["custom_ca"]:
        # TensorFlow Serving passes the empty CA on to gRPC
        # (model_servers/server.cc); Python's gRPC refuses client
        # verification without one, so say why here.
        raise ValueError(
            "ssl config: client_verify: true needs custom_ca, the PEM certificate of the CA that signs the "
            "clients' certificates"
        )
    return config
