"""Tests of osquery_netutil.host."""
