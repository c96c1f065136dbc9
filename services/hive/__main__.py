"""`python -m services.hive`: run one Hive replica (settings from SWARM_* and SWARM_HIVE_*)."""

import asyncio

from services.hive.service import main

asyncio.run(main())
