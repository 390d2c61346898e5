"""The service core: every RPC, protocol-free, over the store (see service.py for the parts)."""
