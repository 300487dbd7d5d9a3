"""The NEO client as a ZODB storage.

``neo.client.Storage.Storage(master_nodes=..., name=...)`` is the storage; ``%import
neo.client`` in a ZConfig file (zope.conf) gives the ``<NEOStorage>`` section
(``component.xml``, opened by ``neo.client.config``); ``neo://name@host:port`` URIs are
resolved by ``neo.client.zodburi``.
"""
