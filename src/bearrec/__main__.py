from bearrec.cli import main

raise SystemExit(main())
