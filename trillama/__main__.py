from trillama.cli import main

raise SystemExit(main())
