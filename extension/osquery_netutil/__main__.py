"""`python -m osquery_netutil ...` is the osquery-netutil command."""

import sys

from osquery_netutil.app.cli import main

sys.exit(main())
