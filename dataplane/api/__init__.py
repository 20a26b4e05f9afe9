"""The control-plane API: HTTP/JSON on a unix socket or mutual-TLS TCP."""
