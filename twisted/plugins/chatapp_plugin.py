"""twistd drop-in: ``twistd chatserver``. Nothing heavy here: an import error hides the plugin."""

from twisted.application.service import ServiceMaker

chatserver = ServiceMaker(
    "chatapp server",
    "chatapp.server.tap",
    "chatapp login and registry server (accounts, lockout, who is online, brokering)",
    "chatserver",
)
