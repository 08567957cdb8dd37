"""python -m cloudstack_sysvm_seed"""

import sys

from .cli import main

sys.exit(main())
