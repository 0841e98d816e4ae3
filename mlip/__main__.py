import sys

from mlip.cli.main import main

sys.exit(main())
