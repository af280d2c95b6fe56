"""``python -m chaoscheckout.network.proxy --control unix:PATH|HOST:PORT [--token-file FILE]
--route NAME=LISTEN:HOST:PORT ...``"""

from chaoscheckout.network.proxy.server import main

raise SystemExit(main())
