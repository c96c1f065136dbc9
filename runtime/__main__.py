"""`python -m runtime`: run one pod (SWARM_* and SWARM_POD_* settings)."""

import asyncio

from runtime.pod import main

asyncio.run(main())
