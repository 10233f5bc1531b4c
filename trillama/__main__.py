from trillama.cli.main import main

raise SystemExit(main())
