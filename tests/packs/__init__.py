"""Tests of osquery_netutil.packs."""
