from gptailor.builtin.cli import main

raise SystemExit(main())
