from spec_exporter.cli import main

raise SystemExit(main())
