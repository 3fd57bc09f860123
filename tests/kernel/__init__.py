"""Tests of osquery_netutil.kernel."""
