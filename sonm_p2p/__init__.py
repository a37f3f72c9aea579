"""sonm-p2p: a peer-to-peer compute marketplace (hubs, miners and a CLI over libp2p)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
