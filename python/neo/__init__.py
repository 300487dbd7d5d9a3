"""NEO: distributed, redundant and scalable storage for ZODB.

This distribution holds the client side only: ``neo.client`` (the ZODB storage, the
ZConfig component and the ``neo://`` zodburi resolver). The cluster's nodes are the
programs of the Rust crate this package is built from.
"""
