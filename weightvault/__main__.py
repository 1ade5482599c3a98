from weightvault.cli import main

raise SystemExit(main())
