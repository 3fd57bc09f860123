"""Tests of osquery_netutil.events."""
