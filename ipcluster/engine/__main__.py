from ipcluster.engine.main import main

raise SystemExit(main())
