"""The HTTP API: the v1 contract of ARCHITECTURE section 4 (``create_app`` in ``app.py``)."""
