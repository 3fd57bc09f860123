"""Tests of osquery_netutil.app."""
