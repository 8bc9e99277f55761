import sys

from kftune.cli.main import main

sys.exit(main())
