import sys

from simulators.bluez.cli import main

sys.exit(main())
