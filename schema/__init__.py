"""The configuration schema, shipped as package data (``schema.cfg``)."""
