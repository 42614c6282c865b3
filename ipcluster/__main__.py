import sys

from ipcluster.cli import main

sys.exit(main())
