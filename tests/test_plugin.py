from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

from twisted.plugins import chatapp_plugin  # noqa: F401  (the drop-in must import cleanly)


def test_chatserver_plugin_is_discoverable() -> None:
    names = {maker.tapname for maker in getPlugins(IServiceMaker)}
    assert "chatserver" in names
