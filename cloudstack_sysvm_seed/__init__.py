"""Register and seed CloudStack SystemVM templates on every NFS secondary store."""

__version__ = "0.1.0"
