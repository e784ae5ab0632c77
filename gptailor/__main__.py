from gptailor.cli import main

raise SystemExit(main())
