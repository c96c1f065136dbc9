"""`python -m services.scheduler`: run the scheduler (SWARM_* and SWARM_SCHEDULER_* settings)."""

import asyncio

from services.scheduler.service import main

asyncio.run(main())
