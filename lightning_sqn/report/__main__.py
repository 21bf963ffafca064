"""``python -m lightning_sqn.report LOGS ...`` (see :mod:`lightning_sqn.report`)."""

from lightning_sqn.report import main

raise SystemExit(main())
