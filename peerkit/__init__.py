"""peerkit: peer-to-peer collaboration for asyncio."""

__version__ = "0.1.0"
