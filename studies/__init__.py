"""Studies: measured questions about motorsearch itself (``python -m studies.<name>.study``)."""
