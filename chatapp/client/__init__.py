"""The client library: the server protocol (calls as Deferreds), typed errors, and a reconnecting connection.

Typical glue (the peer listener is the application's; the server only learns its port)::

    def emit(event: ChatEvent) -> None:                       # chatapp.events
        if isinstance(event, ChatRequested): ...              # a peer connection from event.user is coming
        elif isinstance(event, GaveUp): print(event.error)    # Reconnecting, Reconnected, ServerLost too

    conn = ServerConnection(reactor, "chat.example.org:8750", emit)
    try:
        name = await conn.login("alice", password)            # connects, waits for HELLO, logs in
    except ChatClientError as e:                              # BadCredentials, Locked, ConnectFailed, ...
        print(e)
    port = await serverFromString(reactor, "tcp:0").listen(peer_factory)
    await conn.listen(port.getHost().port)                    # re-sent by itself after a reconnection
    ticket = await conn.connect("bob")                        # PeerTicket(user, host, port, token, proof)
    requester, proof = await conn.verify(token_from_a_peer)   # inside the peer handshake
    await conn.close()                                        # QUIT; no reconnection after this
"""

from chatapp.client.connection import (
    ServerConnection,
    State,
    endpoint_description,
)
from chatapp.client.errors import (
    AlreadyLoggedIn,
    BadCredentials,
    BadRequest,
    BadToken,
    Blocked,
    Busy,
    ChatClientError,
    ClientError,
    Conflict,
    ConnectFailed,
    ConnectionClosed,
    Forbidden,
    InternalError,
    InvalidArgument,
    LineTooLong,
    Locked,
    NoSuchUser,
    NotConnected,
    NotListening,
    NotLoggedIn,
    NotOnline,
    ProtocolViolation,
    RateLimited,
    ServerError,
    SlowDown,
    UserExists,
)
from chatapp.client.server import (
    LineState,
    PeerTicket,
    ServerClientFactory,
    ServerClientProtocol,
    WhoEntry,
)

__all__ = [
    "AlreadyLoggedIn",
    "BadCredentials",
    "BadRequest",
    "BadToken",
    "Blocked",
    "Busy",
    "ChatClientError",
    "ClientError",
    "Conflict",
    "ConnectFailed",
    "ConnectionClosed",
    "Forbidden",
    "InternalError",
    "InvalidArgument",
    "LineState",
    "LineTooLong",
    "Locked",
    "NoSuchUser",
    "NotConnected",
    "NotListening",
    "NotLoggedIn",
    "NotOnline",
    "PeerTicket",
    "ProtocolViolation",
    "RateLimited",
    "ServerClientFactory",
    "ServerClientProtocol",
    "ServerConnection",
    "ServerError",
    "SlowDown",
    "State",
    "UserExists",
    "WhoEntry",
    "endpoint_description",
]
