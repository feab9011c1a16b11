"""chatapp: a Twisted chat system with a login/registry server and direct peer connections."""

__version__ = "0.1.0"
PROTOCOL_VERSION = "chatapp/2"
