"""``python -m monitor`` is the ``coproduction-monitor`` command."""

from monitor.cli import main

raise SystemExit(main())
