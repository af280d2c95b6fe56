"""``python -m chaoscheckout.network.proxy --control HOST:PORT --route NAME=LISTEN:HOST:PORT ...``"""

from chaoscheckout.network.proxy.server import main

raise SystemExit(main())
