"""TensorFlow Serving's --ssl_config_file (SSLConfig in protobuf text format)."""

import re


def parse_ssl_config(text: str) -> dict:
    """TensorFlow Serving's --ssl_config_file (SSLConfig, protobuf text format).

    Fields: server_key, server_cert, custom_ca (PEM strings, newlines
    escaped as \\n) and client_verify (true/false).
    """
    config = {"server_key": "", "server_cert": "", "custom_ca": "", "client_verify": False}
    text = re.sub(r"#[^\n]*", "", text)
    for name, quoted, bare in re.findall(r'(\w+)\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(\w+))', text):
        if name not in config:
            raise ValueError(f"ssl config: unknown field {name!r} (known: {', '.join(sorted(config))})")
        if name == "client_verify":
            if bare not in ("true", "false"):
                raise ValueError(f"ssl config: client_verify must be true or false, got {bare or quoted!r}")
            config[name] = bare == "true"
        else:
            config[name] = quoted.encode("latin-1").decode("unicode_escape")
    if not (config["server_key"] and config["server_cert"]):
        raise ValueError("ssl config: server_key and server_cert are required")
    return config
