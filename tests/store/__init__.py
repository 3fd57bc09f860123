"""Tests of osquery_netutil.store."""
